"""Training: the run's curves from metrics.jsonl (eval loss, perplexity, accuracy per task family,
per-client train loss, personal adapters against the global one on each client's own records, the eval suites'
scores, the MB of adapter tensors sent to and from the clients, in split mode the MB that cross the cut, and ε at its δ
beside its target: each client's as it reports it, the server's against users of the model and against a chain reader)
and its resolved config; refreshes by itself while the run is going.
Series with the same values are drawn as one line named after all of them, so none hides another."""

from __future__ import annotations

import logging

import rundata
import streamlit as st

REFRESH_SECONDS = 5
log = logging.getLogger("flb.web_demo")


def render(run: rundata.Run) -> None:
    st.title("Training")
    live = run.is_running()
    st.fragment(dashboard, run_every=REFRESH_SECONDS if live else None)(run)
    with st.expander("Resolved config (config.json)"):
        st.json(run.config)


def dashboard(run: rundata.Run) -> None:
    """The refreshing part of the page. A fragment rerun is outside the app's error guard, so it has its own."""
    try:
        _dashboard(run)
    except rundata.RunProblem as exc:
        st.error(str(exc), icon=":material/error:")
    except Exception as exc:
        log.exception("web demo training dashboard failed")
        st.error(
            f"The training curves could not be shown: {type(exc).__name__}: {rundata.first_line(exc)} (the full "
            "traceback is in the terminal running streamlit)",
            icon=":material/error:",
        )


def _dashboard(run: rundata.Run) -> None:
    import pandas as pd

    metrics = run.metrics()
    rounds = [m for m in metrics if m.get("kind") == "round" and not m.get("skipped")]
    clients = [m for m in metrics if m.get("kind") == "client"]
    if not rounds:
        st.info("No round evaluated yet; this page refreshes by itself while the run is going.")
        return
    planned = run.config.get("num_rounds", 0)
    if run.is_running():
        st.caption(
            f":material/autorenew: running: round {rounds[-1]['round']} of {planned} done; "
            f"refreshing every {REFRESH_SECONDS} s"
        )
    first, last = rounds[0], rounds[-1]
    cards = st.columns(4)
    cards[0].metric("Rounds done", f"{last['round']} / {planned}")
    cards[1].metric(
        "Eval loss",
        f"{last['eval_loss']:.4f}",
        f"{last['eval_loss'] - first['eval_loss']:+.4f} vs round 0",
        delta_color="inverse",
    )
    cards[2].metric("Perplexity", f"{last['perplexity']:.2f}")
    if "accuracy" in last:
        cards[3].metric(
            "Exact-match accuracy", f"{last['accuracy']:.1%}", f"{last['accuracy'] - first['accuracy']:+.1%} vs round 0"
        )

    by_round = pd.DataFrame(rounds).set_index("round")
    loss, perplexity = st.columns(2)
    _chart(loss, "Eval loss (held-out)", by_round[["eval_loss"]].rename(columns={"eval_loss": "global adapter"}))
    _chart(perplexity, "Perplexity", by_round[["perplexity"]].rename(columns={"perplexity": "global adapter"}))
    accuracy, train_loss = st.columns(2)
    if "accuracy" in by_round:
        families = pd.DataFrame(
            [{"all": m["accuracy"], **m.get("accuracy_by_task", {})} for m in rounds], index=by_round.index
        )
        _chart(accuracy, "Exact-match accuracy per task family", families, fraction=True)
    losses = _per_client(clients, lambda m: m.get("train_loss"))
    if losses.notna().any().any():
        _chart(train_loss, "Local train loss per client", losses)
    elif clients:
        train_loss.caption(
            "No local train loss: under client-side DP it stays with each client (it is a statistic "
            "of the client's data that no noise covers)."
        )
    _personal(clients)
    _suites([m for m in rounds if "suites" in m])
    _communication([m for m in metrics if m.get("kind") == "round" and "comm_down_bytes" in m])
    if run.config.get("mode") == "split":
        _split(run.config["split"], [m for m in rounds if "split_to_server_bytes" in m])
    _privacy(run.config, metrics, [m for m in rounds if m.get("privacy")])
    every_round = rounds + [m for m in metrics if m.get("skipped")]
    late = "Late updates (past server.round_deadline_s, or too stale under fedbuff)"
    for key, title in (("rejected", "Rejected updates"), ("late", late)):
        entries = [(m["round"], r["client_id"], r["reason"]) for m in every_round for r in m.get(key, [])]
        if entries:
            st.subheader(title)
            st.table(pd.DataFrame(entries, columns=["round", "client", "reason"]))


def _personal(clients: list[dict]) -> None:
    """strategy.personalization: the loss of the personal adapters beside the global one's on each client's own
    held-out records, as each client measured it (the records never leave it): the round means, and the last round's
    clients."""
    import pandas as pd

    from flb.run.summary import personal_means

    own = personal_means(clients)
    if not own:
        return
    st.subheader("Personal adapters")
    st.caption(
        "Each sampled client's loss on the records it holds out of its own shard (eval.personal_size): its personal "
        "adapter after the round's training, and the global adapter it received that round."
    )
    means = pd.DataFrame.from_dict(own, orient="index").rename_axis("round")
    means = means.rename(columns={"personal_loss": "personal adapters", "global_loss": "global adapter"})
    _chart(st, "Mean loss on the clients' own held-out records", means)
    last = max(own)
    columns = {
        "personal_loss": "personal adapter",
        "global_loss": "global adapter",
        "personal_accuracy": "personal exact match",
        "global_accuracy": "global exact match",
    }
    table = [
        {"client": m["client_id"], **{columns[k]: round(m["personal"][k], 4) for k in columns if k in m["personal"]}}
        for m in clients
        if m["round"] == last and "personal" in m
    ]
    st.caption(f"Round {last}, per client:")
    with st.container(key="personal-clients"):
        st.table(pd.DataFrame(table), hide_index=True)


def _suites(rounds: list[dict]) -> None:
    """Each eval suite's headline score per round (multiple-choice accuracy, HumanEval pass@1, lm-eval's tasks)."""
    import pandas as pd

    from flb.run.summary import suite_scores

    if not rounds:
        return
    st.subheader("Evaluation suites")
    st.caption(
        "Each suite's headline score of the global adapter on its own questions (multiple-choice accuracy, "
        "HumanEval pass@1, an lm-eval task's accuracy); not the clients' contribution score on the Ledger page."
    )
    scores = pd.DataFrame([suite_scores(m) for m in rounds], index=pd.Index([m["round"] for m in rounds], name="round"))
    _chart(st, "Score per suite (eval.suites)", scores, fraction=True)
    with st.expander("Every suite metric of the last round"):
        st.json(rounds[-1]["suites"])


def _communication(rounds: list[dict]) -> None:
    """MB of adapter tensors sent to and received from the clients, per round (skipped ones too) and in all."""
    import pandas as pd

    from flb.run.comm import MB

    if not rounds:
        return
    st.subheader("Communication")
    last = rounds[-1]
    total = (last["comm_total_down_bytes"] + last["comm_total_up_bytes"]) / MB
    st.metric(
        "Adapter tensors sent to and from clients in all",
        f"{total:.3f} MB",
        help="the tensors' own bytes (the global adapter and the strategy's extras to each sampled client, each "
        "update back), without message framing; comm.budget_mb warns when passed",
    )
    per_round = pd.DataFrame(
        [{"to clients": m["comm_down_bytes"] / MB, "from clients": m["comm_up_bytes"] / MB} for m in rounds],
        index=pd.Index([m["round"] for m in rounds], name="round"),
    )
    _bars(st, "Adapter tensors per round", per_round)


def _split(settings: dict, rounds: list[dict]) -> None:
    """Where the model is cut and the MB of hidden states and gradients that crossed the cut per round."""
    import pandas as pd

    from flb.run.comm import MB

    st.subheader("Split learning")
    noise = (
        f"activation noise σ = {settings['activation_noise']:g}"
        if settings["activation_noise"]
        else "no activation noise"
    )
    clip = f", each token clipped to {settings['activation_clip']:g}" if settings.get("activation_clip") else ""
    st.caption(
        f"Each client runs the embeddings, the first {settings['head_layers']} and the last "
        f"{settings['tail_layers']} blocks, the norm and the head; the server trains the blocks between "
        f"(trunk {settings['trunk']}, client parts {settings['client_parts']}); {noise}{clip}."
    )
    if not rounds:
        return
    total = sum(m["split_to_server_bytes"] + m["split_to_client_bytes"] for m in rounds) / MB
    st.metric(
        "Hidden states and gradients across the cut in all",
        f"{total:.3f} MB",
        help="the frames as sent (safetensors bytes): hidden states and the attention mask to the server, the "
        "trunk's output and the gradients back, and each session's trunk adapter",
    )
    per_round = pd.DataFrame(
        [
            {"to the server": m["split_to_server_bytes"] / MB, "to the clients": m["split_to_client_bytes"] / MB}
            for m in rounds
        ],
        index=pd.Index([m["round"] for m in rounds], name="round"),
    )
    _bars(st, "Hidden states and gradients across the cut per round", per_round)


def _privacy(config: dict, metrics: list[dict], rounds: list[dict]) -> None:
    """ε after each round at its δ, beside its target: each client's, as the client reports it, and the server's,
    against users of the model (amplified by sampling) and against anyone who knows who took part (the chain,
    metrics.jsonl)."""
    import pandas as pd

    from flb.run.summary import privacy_lines

    if not rounds:
        st.caption("No ε recorded: this run used no differential privacy (client.local_dp and server DP were off).")
        return
    st.subheader("Privacy")
    last = rounds[-1]["privacy"]
    st.metric(
        f"ε of the run after round {rounds[-1]['round']} (the largest below)",
        _epsilon(last.get("epsilon")),
        help="(ε, δ)-DP: whether one unit of data took part (a client's shard or example, client.dp.adjacency; a "
        "whole client for the server's DP) changes the probability of any output by at most a factor e^ε, "
        "plus δ; the smaller ε, the stronger the guarantee",
    )
    with st.container(key="privacy-budget"):
        st.table(_budget_rows(config, last), hide_index=True)
    index = pd.Index([m["round"] for m in rounds], name="round")
    clients = pd.DataFrame(
        [
            {
                f"client {client_id}": _number(part.get("epsilon"))
                for client_id, part in sorted(m["privacy"].get("clients", {}).items(), key=lambda kv: int(kv[0]))
            }
            for m in rounds
        ],
        index=index,
    )
    server = pd.DataFrame([_server_epsilons(m["privacy"].get("server") or {}) for m in rounds], index=index)
    client_parts = list(last.get("clients", {}).values())
    targets = {
        f"target ε = {target:g}": target
        for target in {_client_target(config, part) for part in client_parts}
        if target is not None
    }
    charts = [
        (title, data.dropna(axis="columns", how="all"), rules)
        for title, data, rules in (
            (f"ε per client, {_deltas(client_parts)} (as each reports it)", clients, targets),
            (f"ε of the server's DP, {_deltas([last.get('server') or {}])}", server, {}),
        )
        if data.notna().any().any()
    ]
    for column, (title, data, rules) in zip(st.columns(2), charts):
        _chart(column, title, data, rules=rules)
    with st.expander("How each ε is computed (opacus' RDP accountant over its (z, q, steps) history)"):
        st.code("\n".join(privacy_lines(metrics)).strip(), language=None)


def _budget_rows(config: dict, privacy: dict) -> list[dict]:
    """One row per party of the last round's privacy: its ε, its target and its δ; clients whose rows are the same
    share one."""
    rows: dict[tuple, list[int]] = {}
    for client_id, part in privacy.get("clients", {}).items():
        target = _client_target(config, part)
        key = (
            _epsilon(part.get("epsilon")),
            "none: client.dp.noise_multiplier fixes the noise"
            if target is None
            else f"{target:g} (client.dp.target_epsilon)",
            f"{part['delta']:g}",
        )
        rows.setdefault(key, []).append(int(client_id))
    table = [
        {"who": _clients_label(ids), "ε": epsilon, "target ε": target, "δ": delta}
        for (epsilon, target, delta), ids in sorted(rows.items(), key=lambda row: min(row[1]))
    ]
    server = privacy.get("server")
    if server:
        no_target = "none: server.noise_multiplier fixes the noise"
        table.append(
            {
                "who": "server, against model users",
                "ε": _epsilon(server.get("epsilon")),
                "target ε": no_target,
                "δ": f"{server['delta']:g}",
            }
        )
        if server.get("known_participants"):
            table.append(
                {
                    "who": "server, against chain readers (q = 1)",
                    "ε": _epsilon(server["known_participants"].get("epsilon")),
                    "target ε": no_target,
                    "δ": f"{server['delta']:g}",
                }
            )
    return table


def _client_target(config: dict, part: dict) -> float | None:
    """The ε a client may spend over the run: its report says it when its noise was derived from the target; an
    older run's config.json does (client.dp.target_epsilon counts only when client.dp.noise_multiplier is null)."""
    if "target_epsilon" in part:
        return part["target_epsilon"]
    dp = config.get("client", {}).get("dp", {})
    return dp.get("target_epsilon") if dp.get("noise_multiplier") is None else None


def _deltas(parts: list[dict]) -> str:
    return "δ = " + " / ".join(sorted({f"{part['delta']:g}" for part in parts if "delta" in part}))


def _clients_label(ids: list[int]) -> str:
    """'client 3', 'clients 0-2, 5'."""
    spans: list[list[int]] = []
    for client_id in sorted(ids):
        if spans and spans[-1][1] == client_id - 1:
            spans[-1][1] = client_id
        else:
            spans.append([client_id, client_id])
    listed = ", ".join(str(first) if first == last else f"{first}-{last}" for first, last in spans)
    return f"client {listed}" if len(ids) == 1 else f"clients {listed}"


def _server_epsilons(server: dict) -> dict[str, float]:
    """Against users of the model (amplified by sampling), and against anyone who knows who took part (the
    chain's readers, with q = 1)."""
    return {
        "model users": _number(server.get("epsilon")),
        "chain readers": _number((server.get("known_participants") or {}).get("epsilon")),
    }


def _epsilon(value) -> str:
    return "unbounded" if value is None else f"{value:.3f}"


def _number(value) -> float:
    """A reported ε as a number for a chart; unbounded (None) is not drawn."""
    return float("nan") if value is None else float(value)


def _per_client(clients: list[dict], value):
    import pandas as pd

    rows = [{"round": m["round"], "client": f"client {m['client_id']}", "value": _number(value(m))} for m in clients]
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).pivot_table(index="round", columns="client", values="value", dropna=False)


def _chart(where, title: str, data, fraction: bool = False, rules: dict[str, float] | None = None) -> None:
    """A line per column over rounds, each with its own colour, marker and dash. Columns with the same values are
    one line named after all of them ('client 0 = client 1'), so no line hides another. The y axis fits the data
    (small changes stay visible); `rules` are labelled horizontal lines (a target)."""
    import altair as alt
    import pandas as pd

    points = _points(_merge_identical(data)).dropna()
    if fraction:
        y_scale = alt.Scale(domain=[0, 1])
    elif points["value"].nunique() == 1 and not rules:  # one value: a band around it, not a single tick
        value = points["value"].iloc[0]
        y_scale = alt.Scale(domain=[value - abs(value) / 2, value + abs(value) / 2] if value else [-1, 1])
    else:
        y_scale = alt.Scale(zero=False)
    series = {"title": None, "legend": alt.Legend(orient="bottom", direction="vertical", labelLimit=600)}
    base = alt.Chart(points).encode(
        x=alt.X("round:O", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("value:Q", title=None, scale=y_scale, axis=alt.Axis(format="%") if fraction else alt.Axis()),
        color=alt.Color("series:N", **series),
    )
    layers = [
        base.mark_line().encode(strokeDash=alt.StrokeDash("series:N", **series)),
        base.mark_point(filled=True, size=60).encode(
            shape=alt.Shape("series:N", **series), tooltip=["round", "series", alt.Tooltip("value:Q", format=".4f")]
        ),
    ]
    if rules:
        lines = alt.Chart(pd.DataFrame({"rule": list(rules), "value": list(rules.values())}))
        layers += [
            lines.mark_rule(strokeDash=[2, 2], color="gray").encode(y="value:Q"),
            lines.mark_text(align="left", baseline="bottom", dx=4, dy=-2, color="gray").encode(
                y="value:Q", x=alt.value(0), text="rule:N"
            ),
        ]
    where.altair_chart(alt.layer(*layers, title=title), width="stretch")


def _bars(where, title: str, data) -> None:
    """MB per round, one bar per column side by side, from zero (so equal ones stay visible and the axis has
    ticks to read)."""
    import altair as alt

    chart = (
        alt.Chart(_points(data).dropna(), title=title)
        .mark_bar()
        .encode(
            x=alt.X("round:O", axis=alt.Axis(labelAngle=0)),
            xOffset="series:N",
            y=alt.Y("value:Q", title="MB", axis=alt.Axis(tickCount=5)),
            color=alt.Color("series:N", title=None),
            tooltip=["round", "series", alt.Tooltip("value:Q", title="MB", format=".4f")],
        )
    )
    where.altair_chart(chart, width="stretch")


def _points(data):
    """A wide frame (a column per series, a row per round) as rows of round, series, value."""
    return data.rename_axis(index="round", columns=None).reset_index().melt("round", var_name="series")


def _merge_identical(data):
    """The columns of `data`, those with equal values (NaN where the other is NaN too) kept once under their names
    joined with ' = '."""
    groups: dict[tuple, list[str]] = {}
    for column in data.columns:
        groups.setdefault(tuple(data[column].fillna(float("inf"))), []).append(column)
    return data[[names[0] for names in groups.values()]].set_axis(
        [_joined_name(names) for names in groups.values()], axis="columns"
    )


def _joined_name(names: list[str]) -> str:
    return " = ".join(names) if len(names) <= 4 else f"{names[0]} = … = {names[-1]} ({len(names)} identical)"
