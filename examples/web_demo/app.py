"""FLB web demo: chat with the model a run produced, watch its training curves, browse its audit trail.

    streamlit run examples/web_demo/app.py -- --run RUN_DIR        (default: runs/latest)

Each page has its own address (/chat, /training, /ledger; the root opens /chat), and `?run=<run-id>` picks the run.
This file only wires things: the pages, the run picker, and the empty and broken states."""

from __future__ import annotations

import argparse
import logging
import sys
from functools import partial
from pathlib import Path

import chat_page
import ledger_page
import rundata
import streamlit as st
import training_page

REPO_ROOT = str(Path(__file__).resolve().parents[2])
log = logging.getLogger("flb.web_demo")

PAGES = (
    ("Chat", ":material/chat:", "chat", chat_page.render),  # the first one is the one the root opens
    ("Training", ":material/monitoring:", "training", training_page.render),
    ("Ledger", ":material/receipt_long:", "ledger", ledger_page.render),
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="streamlit run examples/web_demo/app.py --")
    parser.add_argument(
        "--run",
        type=Path,
        default=Path("runs/latest"),
        help="a run directory, or an output_dir holding runs (default: runs/latest)",
    )
    return parser.parse_known_args(sys.argv[1:])[0]


def no_run_page(target: Path) -> None:
    st.title("No run yet")
    st.write(f"There is no FLB run at `{target}`. Make one (about 5 minutes on 2 CPU cores), then reload this page:")
    st.code(rundata.MAKE_A_RUN, language="bash")
    st.write("Or point the demo at a run directory you already have:")
    st.code("streamlit run examples/web_demo/app.py -- --run runs/<run-id>", language="bash")


def pick_run(target: Path, runs: list[Path]) -> Path:
    """The sidebar's run picker; `?run=<run-id>` in the address selects one too. Going to another page keeps the
    run (streamlit drops the query string there)."""
    options = runs + ([target.resolve()] if target.exists() and target.resolve() not in runs else [])
    default = target.resolve() if target.exists() else options[0]
    wanted = st.query_params.get("run") or st.session_state.get("chosen run", default.name)
    names = [p.name for p in options]
    index = names.index(wanted) if wanted in names else options.index(default)
    chosen = st.sidebar.selectbox("Run", options, index=index, format_func=lambda p: p.name, key="run")
    st.query_params["run"] = st.session_state["chosen run"] = chosen.name
    st.sidebar.caption(f"`{chosen}`")
    return chosen


def show(render, target: Path) -> None:
    """One page of the run the sidebar picks; the no-run page or the run's problem in its place."""
    from flb.errors import FLBError

    runs = rundata.list_runs(target)
    if not runs and not target.exists():
        no_run_page(target)
        return
    try:
        render(rundata.open_run(pick_run(target, runs)))
    except (rundata.RunProblem, FLBError) as exc:
        st.error(str(exc), icon=":material/error:")
    except Exception as exc:  # the page stays usable; the traceback goes to the terminal, not the browser
        log.exception("web demo page %s failed", render.__module__)
        st.error(
            f"This page could not be shown: {type(exc).__name__}: {rundata.first_line(exc)} "
            "(the full traceback is in the terminal running streamlit)",
            icon=":material/error:",
        )


def open_first_page(first: st.Page) -> None:
    """The root address: streamlit serves its default page there and nowhere else, so the root is a page of its
    own that opens the first one at its address (keeping `?run=`)."""
    st.switch_page(first, query_params=st.query_params.to_dict())


def main() -> None:
    if REPO_ROOT not in sys.path:
        sys.path.append(REPO_ROOT)  # flb, chain and server, however streamlit was started

    st.set_page_config(page_title="FLB web demo", page_icon=":material/hub:", layout="wide")
    target = parse_args().run
    pages = [
        st.Page(partial(show, render, target), title=title, icon=icon, url_path=url_path)
        for title, icon, url_path, render in PAGES
    ]
    root = st.Page(partial(open_first_page, pages[0]), title="FLB web demo", url_path="home", default=True)
    page = st.navigation([root, *pages], position="hidden")  # the menu below lists the pages, not the root
    for each in pages:
        st.sidebar.page_link(each)
    st.sidebar.divider()
    page.run()


main()
