"""FLB web demo: chat with the model a run produced, watch its training curves, browse its audit trail.

    streamlit run examples/web_demo/app.py -- --run RUN_DIR        (default: runs/latest)

This file only wires things: the run picker, the empty and broken states, and the three pages."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import streamlit as st

import chat_page
import ledger_page
import rundata
import training_page

REPO_ROOT = str(Path(__file__).resolve().parents[2])
log = logging.getLogger("flb.web_demo")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="streamlit run examples/web_demo/app.py --")
    parser.add_argument("--run", type=Path, default=Path("runs/latest"),
                        help="a run directory, or an output_dir holding runs (default: runs/latest)")
    return parser.parse_known_args(sys.argv[1:])[0]


def no_run_page(target: Path) -> None:
    st.title("No run yet")
    st.write(f"There is no FLB run at `{target}`. Make one (about 5 minutes on 2 CPU cores), then reload this page:")
    st.code(rundata.MAKE_A_RUN, language="bash")
    st.write("Or point the demo at a run directory you already have:")
    st.code("streamlit run examples/web_demo/app.py -- --run runs/<run-id>", language="bash")


def pick_run(target: Path, runs: list[Path]) -> Path:
    """The sidebar's run picker; `?run=<run-id>` in the address selects one too."""
    options = runs + ([target.resolve()] if target.exists() and target.resolve() not in runs else [])
    default = target.resolve() if target.exists() else options[0]
    wanted = st.query_params.get("run", default.name)
    names = [p.name for p in options]
    index = names.index(wanted) if wanted in names else options.index(default)
    chosen = st.sidebar.selectbox("Run", options, index=index, format_func=lambda p: p.name, key="run")
    st.query_params["run"] = chosen.name
    st.sidebar.caption(f"`{chosen}`")
    return chosen


def main() -> None:
    if REPO_ROOT not in sys.path:
        sys.path.append(REPO_ROOT)  # flb, chain and server, however streamlit was started
    from flb.errors import FLBError

    st.set_page_config(page_title="FLB web demo", page_icon=":material/hub:", layout="wide")
    target = parse_args().run
    runs = rundata.list_runs(target)
    if not runs and not target.exists():
        no_run_page(target)
        return
    try:
        run = rundata.open_run(pick_run(target, runs))
    except rundata.RunProblem as exc:
        st.error(str(exc), icon=":material/error:")
        return
    pages = [
        st.Page(lambda: chat_page.render(run), title="Chat", icon=":material/chat:", url_path="chat", default=True),
        st.Page(lambda: training_page.render(run), title="Training", icon=":material/monitoring:", url_path="training"),
        st.Page(lambda: ledger_page.render(run), title="Ledger", icon=":material/receipt_long:", url_path="ledger"),
    ]
    page = st.navigation(pages)
    try:
        page.run()
    except (rundata.RunProblem, FLBError) as exc:
        st.error(str(exc), icon=":material/error:")
    except Exception as exc:  # the page stays usable; the traceback goes to the terminal, not the browser
        log.exception("web demo page %s failed", page.title)
        st.error(f"This page could not be shown: {type(exc).__name__}: {rundata.first_line(exc)} "
                 "(the full traceback is in the terminal running streamlit)", icon=":material/error:")


main()
