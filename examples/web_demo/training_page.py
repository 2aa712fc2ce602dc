"""Training: the run's curves from metrics.jsonl (eval loss, perplexity, accuracy per task family,
per-client train loss and ε) and its resolved config; refreshes by itself while the run is going."""
from __future__ import annotations

import streamlit as st

import rundata

REFRESH_SECONDS = 5


def render(run: rundata.Run) -> None:
    st.title("Training")
    live = run.is_running()
    st.fragment(dashboard, run_every=REFRESH_SECONDS if live else None)(run)
    with st.expander("Resolved config (config.json)"):
        st.json(run.config)


def dashboard(run: rundata.Run) -> None:
    import pandas as pd

    try:
        metrics = run.metrics()
    except rundata.RunProblem as exc:  # a fragment rerun is outside the app's error guard
        st.error(str(exc), icon=":material/error:")
        return
    rounds = [m for m in metrics if m.get("kind") == "round" and not m.get("skipped")]
    clients = [m for m in metrics if m.get("kind") == "client"]
    if not rounds:
        st.info("No round evaluated yet; this page refreshes by itself while the run is going.")
        return
    planned = run.config.get("num_rounds", 0)
    if run.is_running():
        st.caption(f":material/autorenew: running: round {rounds[-1]['round']} of {planned} done; "
                   f"refreshing every {REFRESH_SECONDS} s")
    first, last = rounds[0], rounds[-1]
    cards = st.columns(4)
    cards[0].metric("Rounds done", f"{last['round']} / {planned}")
    cards[1].metric("Eval loss", f"{last['eval_loss']:.4f}", f"{last['eval_loss'] - first['eval_loss']:+.4f} vs round 0",
                    delta_color="inverse")
    cards[2].metric("Perplexity", f"{last['perplexity']:.2f}")
    if "accuracy" in last:
        cards[3].metric("Exact-match accuracy", f"{last['accuracy']:.1%}",
                        f"{last['accuracy'] - first['accuracy']:+.1%} vs round 0")

    by_round = pd.DataFrame(rounds).set_index("round")
    loss, perplexity = st.columns(2)
    _chart(loss, "Eval loss (held-out)", by_round[["eval_loss"]].rename(columns={"eval_loss": "global adapter"}))
    _chart(perplexity, "Perplexity", by_round[["perplexity"]].rename(columns={"perplexity": "global adapter"}))
    accuracy, train_loss = st.columns(2)
    if "accuracy" in by_round:
        families = pd.DataFrame([{"all": m["accuracy"], **m.get("accuracy_by_task", {})} for m in rounds], index=by_round.index)
        _chart(accuracy, "Exact-match accuracy per task family", families, fraction=True)
    if clients:
        _chart(train_loss, "Local train loss per client", _per_client(clients, lambda m: m.get("train_loss")))
        epsilon = _per_client(clients, lambda m: (m.get("privacy") or {}).get("epsilon"))
        if epsilon.notna().any().any():
            _chart(st, "Privacy budget ε per client (client-side DP)", epsilon)
        else:
            st.caption("No ε recorded: client-side differential privacy (client.local_dp) was off in this run.")
    rejected = [(m["round"], r["client_id"], r["reason"]) for m in rounds + [m for m in metrics if m.get("skipped")]
                for r in m.get("rejected", [])]
    if rejected:
        st.subheader("Rejected updates")
        st.table(pd.DataFrame(rejected, columns=["round", "client", "reason"]))


def _per_client(clients: list[dict], value):
    import pandas as pd

    rows = [{"round": m["round"], "client": f"client {m['client_id']}", "value": value(m)} for m in clients]
    return pd.DataFrame(rows).pivot_table(index="round", columns="client", values="value", dropna=False)


def _chart(where, title: str, data, fraction: bool = False) -> None:
    """A line per column over rounds; the y axis fits the data (small changes stay visible)."""
    import altair as alt

    points = data.rename_axis(index="round", columns=None).reset_index().melt("round", var_name="series")
    y_scale = alt.Scale(domain=[0, 1]) if fraction else alt.Scale(zero=False)
    chart = alt.Chart(points.dropna(), title=title).mark_line(point=True).encode(
        x=alt.X("round:O", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("value:Q", title=None, scale=y_scale, axis=alt.Axis(format="%") if fraction else alt.Axis()),
        color=alt.Color("series:N", title=None), tooltip=["round", "series", alt.Tooltip("value:Q", format=".4f")])
    where.altair_chart(chart, width="stretch")
