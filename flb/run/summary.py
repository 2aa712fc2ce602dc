"""What a run shows at the end: a summary table, summary.json and PNG plots, all from metrics.jsonl."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path

from flb.atomic import write_json_atomic
from flb.run.comm import MB
from flb.run.directory import RunDir


def round_rows(metrics: list[dict]) -> list[dict]:
    return [m for m in metrics if m["kind"] == "round"]


MECHANISMS = {
    "dp_fixed_clipping": "server DP-FedAvg, fixed clipping: subsampled Gaussian, one step per round",
    "dp_adaptive_clipping": "server DP-FedAvg, adaptive clipping (Andrew et al. 2021): subsampled Gaussian with the "
    "combined z, one step per round",
    "local_update": "local DP on the update (clip, Gaussian noise): Gaussian mechanism, "
    "one step per round taken part in",
    "local_dpsgd": "local DP-SGD (opacus): Poisson-subsampled Gaussian, one step per optimizer step",
}


NOTHING_SPENT = {"epsilon": 0.0}  # a round before any client trained under local DP (round 0) reports no privacy


def summary_table(metrics: list[dict]) -> str:
    """One line per round: clients, eval loss, perplexity, accuracy, each suite's headline score, mean client train
    loss, training and evaluation time, MB sent to and from the clients, and the run's epsilon so far when it uses
    DP; a footer line says what the columns mean."""
    train_loss = _mean_train_loss(metrics)
    rows = round_rows(metrics)
    suites = list(dict.fromkeys(name for row in rows for name in suite_scores(row)))
    private = any("privacy" in row for row in rows)
    columns = (
        [("round", 5), ("clients", 7), ("eval_loss", 9), ("ppl", 8), ("accuracy", 8)]
        + [(name.replace(" ", "_"), max(len(name), 6)) for name in suites]
        + [("train_loss", 10), ("train_s", 7), ("eval_s", 7), ("comm_MB", 8)]
        + ([("epsilon", 8)] if private else [])
    )
    lines = [" ".join(f"{name:>{width}}" for name, width in columns)]
    for row in rows:
        scores = suite_scores(row)
        cells = [
            f"{row['round']:>5}",
            f"{row['num_clients']:>7}",
            _fmt(row.get("eval_loss"), 9, 4),
            _fmt(row.get("perplexity"), 8, 2),
            _fmt(row.get("accuracy"), 8, 3),
        ]
        cells += [_fmt(scores.get(name), max(len(name), 6), 3) for name in suites]
        train_s = row.get("round_time_s") if row["round"] else None  # round 0 trains nothing
        cells += [
            _fmt(train_loss.get(row["round"]), 10, 4),
            _fmt(train_s, 7, 1),
            _fmt(row.get("eval_time_s"), 7, 1),
            _fmt(_round_mb(row), 8, 3),
        ]
        cells += [f"{_epsilon(row.get('privacy', NOTHING_SPENT)['epsilon']):>8}"] if private else []
        lines.append(" ".join(cells) + ("  skipped" if row.get("skipped") else ""))
    return "\n".join(lines + [TABLE_FOOTER + (EPSILON_FOOTER if private else "")])


TABLE_FOOTER = (
    "round 0: the base model; ppl: exp(eval_loss); accuracy: exact match; train_loss: the clients' mean; "
    "train_s: sampling, local training, aggregation; eval_s: evaluation; comm_MB: adapter bytes to and "
    "from the clients"
)
EPSILON_FOOTER = "; epsilon: the run's so far (the largest of server and clients)"


def round_line(row: dict, client_rows: list[dict], num_rounds: int | None = None) -> str:
    """One round's result as it completes, for the terminal and run.log: e.g. `round 2/5 (2 clients, 1 late): eval_loss
    1.8821 (ppl 6.57), accuracy 0.250, train_loss 2.0134, epsilon 1.21, 0.53 MB, train 41.2 s + eval 12.9 s`."""
    of = f"/{num_rounds}" if num_rounds else ""
    late = f", {len(row['late'])} late" if row.get("late") else ""  # past server.round_deadline_s, or too stale
    stale = [row["round"] - 1 - c["start_round"] for c in client_rows if "start_round" in c]  # fedbuff
    late += f", {len(stale)} stale (up to {max(stale)})" if stale else ""
    if row.get("skipped"):
        return (
            f"round {row['round']}{of}: skipped ({len(row.get('rejected', []))} of {row.get('num_sampled', 0)} "
            f"sampled updates rejected{late}; the global adapter is unchanged)"
        )
    parts = [f"eval_loss {row['eval_loss']:.4f} (ppl {row['perplexity']:.2f})"]
    if "accuracy" in row:
        parts.append(f"accuracy {row['accuracy']:.3f}")
    if "preference_accuracy" in row:  # client.objective dpo
        parts.append(f"preference accuracy {row['preference_accuracy']:.3f} (margin {row['preference_margin']:.3f})")
    parts += [f"{name} {score:.3f}" for name, score in suite_scores(row).items()]
    if (train_loss := _mean_train_loss(client_rows).get(row["round"])) is not None:
        parts.append(f"train_loss {train_loss:.4f}")
    if (own := personal_means(client_rows).get(row["round"])) is not None:  # strategy.personalization
        text = f"own split: personal {own['personal_loss']:.4f} vs global {own['global_loss']:.4f}"
        if (matched := personal_means(client_rows, PERSONAL_ACCURACIES).get(row["round"])) is not None:
            text += f" (accuracy {matched['personal_accuracy']:.3f} vs {matched['global_accuracy']:.3f})"
        parts.append(text)
    if "privacy" in row:
        parts.append(f"epsilon {_epsilon(row['privacy']['epsilon'])}")
    if (megabytes := _round_mb(row)) is not None:
        parts.append(f"{megabytes:.2f} MB")
    if row["round"] == 0:
        return f"round 0{of} (base model): " + ", ".join(parts + [f"eval {row.get('eval_time_s', 0):.1f} s"])
    parts.append(f"train {row.get('round_time_s', 0):.1f} s + eval {row.get('eval_time_s', 0):.1f} s")
    return f"round {row['round']}{of} ({row['num_clients']} clients{late}): " + ", ".join(parts)


def ledger_lines(summary: dict, verbose: bool = False, last: int = 3) -> list[str]:
    """The ledger in the end summary: chain and contract, the transactions counted by record kind and status, the
    last `last` of them (every one with `verbose`; the explorer always lists them all), and how to inspect and
    verify."""
    transactions = summary["transactions"]
    kinds = Counter(tx["record"].split(":")[0] for tx in transactions)
    statuses = Counter(tx["status"] for tx in transactions)
    lines = [
        f"ledger: {summary['chain']} (chain id {summary['chain_id']}), FLB contract {summary['contract']}",
        f"  {len(transactions)} transactions ({', '.join(f'{n} {kind}' for kind, n in kinds.items())}): "
        + ", ".join(f"{n} {status}" for status, n in statuses.items()),
    ]
    shown = transactions if verbose else transactions[-last:]
    if len(shown) < len(transactions):
        lines.append(f"  the last {len(shown)} (all of them with --verbose, or in the explorer):")
    for tx in shown:
        link = f"  {tx['link']}" if tx.get("link") else ""
        lines.append(f"  {tx['record']:<32} {tx['status']:<10} {tx['tx'] or '-'}{link}")
    if summary["pending"]:
        lines.append(f"  {summary['pending']} records not yet on chain (sent by --resume; see run.log)")
    return lines + [f"inspect: {summary['explorer']}", f"verify the files against the chain: {summary['verify']}"]


PERSONAL_LOSSES = ("personal_loss", "global_loss")
PERSONAL_ACCURACIES = ("personal_accuracy", "global_accuracy")  # exact match, on prompt-completion records


def personal_means(metrics: list[dict], keys: tuple[str, ...] = PERSONAL_LOSSES) -> dict[int, dict[str, float]]:
    """strategy.personalization: per round, the mean over its clients of what each measured on its own held-out
    records (`keys` of their "personal" report: the loss, or the exact-match accuracy, of its personal adapter and of
    the global one)."""
    by_round = defaultdict(list)
    for m in metrics:
        if m["kind"] == "client" and all(key in m.get("personal", {}) for key in keys):
            by_round[m["round"]].append(m["personal"])
    return {
        round: {key: sum(p[key] for p in rows) / len(rows) for key in keys} for round, rows in sorted(by_round.items())
    }


def _mean_train_loss(metrics: list[dict]) -> dict[int, float]:
    """Each round's mean client train loss (a client under local DP keeps its loss to itself: None, left out)."""
    losses = defaultdict(list)
    for m in metrics:
        if m["kind"] == "client" and m["train_loss"] is not None:
            losses[m["round"]].append(m["train_loss"])
    return {round: sum(values) / len(values) for round, values in losses.items()}


def privacy_lines(metrics: list[dict]) -> list[str]:
    """What the run's last round spent, with the numbers that let a reader recompute each epsilon."""
    rows = [row for row in round_rows(metrics) if "privacy" in row]
    if not rows:
        return []
    privacy = rows[-1]["privacy"]
    clients = sorted(privacy.get("clients", {}).items(), key=lambda item: int(item[0]))
    parts = ([("server", privacy["server"])] if "server" in privacy else []) + [
        (f"client {client_id}", part) for client_id, part in clients
    ]
    lines = [
        f"\nprivacy after round {rows[-1]['round']}: epsilon = {_epsilon(privacy['epsilon'])} for the run (the "
        "largest below); each from opacus' RDP accountant over its (z, q, steps) history at its delta"
    ]
    for who, part in parts:
        lines.append(
            f"  {who:<9} epsilon = {_epsilon(part['epsilon'])} at delta = {part['delta']:g}: z = "
            f"{part['noise_multiplier']:.4g}, C = {part['clip_norm']:.4g}, q = {part['sample_rate']:.4g}, "
            f"{part['steps']} steps; {MECHANISMS[part['mechanism']]}"
            + ("; reported by the client" if who != "server" else "")
            + ("; OVER its target (--allow-over-budget)" if part.get("over_target_allowed") else "")
        )
        known = part.get("known_participants")
        if known:
            lines.append(
                f"  {'':<9} epsilon = {_epsilon(known['epsilon'])} against anyone who knows who took part "
                f"(the ledger, metrics.jsonl): q = 1 over the {known['steps']} rounds of the most-sampled "
                "client"
            )
    return lines


# the number each suite is judged by; lm_eval's tasks report several, the first of these found is shown
HEADLINE = {"multiple_choice": "accuracy", "humaneval": "pass@1"}
LM_EVAL_HEADLINES = ("acc", "acc_norm", "exact_match", "pass@1")


def suite_scores(row: dict) -> dict[str, float]:
    """One round's headline number per suite ('multiple_choice accuracy', 'humaneval pass@1', 'lm_eval arc_easy
    acc'), from its `suites` metrics."""
    scores = {}
    for suite, metrics in row.get("suites", {}).items():
        if suite in HEADLINE:
            scores[f"{suite} {HEADLINE[suite]}"] = metrics[HEADLINE[suite]]
            continue
        for task, values in metrics.items():
            metric = next(
                (
                    m
                    for headline in LM_EVAL_HEADLINES
                    for m in values  # "exact_match,strict-match" too
                    if m.split(",")[0] == headline and isinstance(values[m], (int, float))
                ),
                None,
            )
            if metric is not None:
                scores[f"{suite} {task} {metric}"] = values[metric]
    return scores


def _round_mb(row: dict) -> float | None:
    return (row["comm_down_bytes"] + row["comm_up_bytes"]) / MB if "comm_down_bytes" in row else None


def _epsilon(value: float | None) -> str:
    return "inf" if value is None else f"{value:.3f}"


def _fmt(value, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def write_summary(run: RunDir, final_digest: str, config) -> dict:
    """summary.json: the final adapter and its digest, the numbers of summary_numbers, and what the ledger publishes
    (flb.privacy.disclosure)."""
    from flb.privacy.disclosure import Disclosure

    summary = {
        "run_dir": str(run.path),
        "final_adapter": str(run.path / "final_adapter"),
        "final_digest": final_digest,
        **summary_numbers(round_rows(run.metrics())),
    }
    if config.chain_record:
        summary["disclosure"] = Disclosure.of(config).to_dict()
    write_json_atomic(run.path / "summary.json", summary)
    return summary


def summary_numbers(rows: list[dict]) -> dict:
    """What summary.json says of the run's round rows (each anchored on chain by its digest, so a verifier derives
    the same numbers): rounds, how many aggregated anything, loss and accuracy (and each suite's headline score)
    before and after, the bytes sent to and from the clients in all, the privacy spent (and whether a client went
    past its target as --allow-over-budget allowed)."""
    aggregated = [r for r in rows if not r.get("skipped")]
    first, last = aggregated[0], aggregated[-1]
    numbers = {
        "rounds": rows[-1]["round"],
        "rounds_aggregated": len(aggregated) - 1,
        "eval_loss": {"round_0": first.get("eval_loss"), "final": last.get("eval_loss")},
        "accuracy": {"round_0": first.get("accuracy"), "final": last.get("accuracy")},
        "comm": {
            "down_bytes": rows[-1].get("comm_total_down_bytes", 0),
            "up_bytes": rows[-1].get("comm_total_up_bytes", 0),
        },
    }
    if "suites" in first:
        numbers["suites"] = {"round_0": suite_scores(first), "final": suite_scores(last)}
    if "privacy" in rows[-1]:
        numbers["privacy"] = rows[-1]["privacy"]
        numbers["over_target_allowed"] = any(
            part.get("over_target_allowed") for part in rows[-1]["privacy"].get("clients", {}).values()
        )
    return numbers


def write_plots(run: RunDir) -> list[Path]:
    """eval_loss.png, accuracy.png (overall and per task family), client_train_loss.png, personal.png (personal
    against global adapters on the clients' own records, under strategy.personalization), comm.png (MB per round and
    in total), suites.png (each eval suite's headline score) when eval.suites has more than exact_match, and
    epsilon.png when the run uses DP."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    metrics = run.metrics()
    rounds = [r for r in round_rows(metrics) if not r.get("skipped")]
    folder = run.path / "plots"
    folder.mkdir(exist_ok=True)
    written = []

    def save(fig, name):
        fig.axes[0].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        path = folder / name
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["round"] for r in rounds], [r["eval_loss"] for r in rounds], marker="o")
    ax.set(xlabel="round", ylabel="eval loss", title="Global adapter: held-out loss")
    save(fig, "eval_loss.png")

    if any("accuracy" in r for r in rounds):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["round"] for r in rounds], [r["accuracy"] for r in rounds], marker="o", linewidth=3, label="all")
        for task in rounds[0].get("accuracy_by_task", {}):
            ax.plot([r["round"] for r in rounds], [r["accuracy_by_task"][task] for r in rounds], marker=".", label=task)
        ax.set(xlabel="round", ylabel="exact match", title="Exact-match accuracy (greedy)", ylim=(-0.05, 1.05))
        ax.legend(fontsize=7)
        save(fig, "accuracy.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    by_client = defaultdict(list)
    for m in metrics:
        if m["kind"] == "client" and m["train_loss"] is not None:
            by_client[m["client_id"]].append((m["round"], m["train_loss"]))
    for client_id, points in sorted(by_client.items()):
        ax.plot(*zip(*points), marker="o", label=f"client {client_id}")
    ax.set(xlabel="round", ylabel="train loss", title="Local training loss per client")
    if by_client:
        ax.legend(fontsize=7)
    save(fig, "client_train_loss.png")

    if own := personal_means(metrics):
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, label in (("personal_loss", "personal adapters"), ("global_loss", "global adapter")):
            ax.plot(list(own), [losses[key] for losses in own.values()], marker="o", label=label)
        ax.set(xlabel="round", ylabel="loss", title="Clients' own held-out records (mean over the round's clients)")
        ax.legend(fontsize=7)
        save(fig, "personal.png")

    scored = [(r["round"], suite_scores(r)) for r in rounds if "suites" in r]
    if scored:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in scored[-1][1]:
            ax.plot(
                [round for round, scores in scored],
                [scores.get(name, math.nan) for _, scores in scored],
                marker="o",
                label=name,
            )
        ax.set(xlabel="round", ylabel="score", title="Evaluation suites (eval.suites)", ylim=(-0.05, 1.05))
        ax.legend(fontsize=7)
        save(fig, "suites.png")

    sent = [r for r in round_rows(metrics) if "comm_down_bytes" in r]
    if sent:
        fig, ax = plt.subplots(figsize=(6, 4))
        x = [r["round"] for r in sent]
        ax.bar([v - 0.2 for v in x], [r["comm_down_bytes"] / MB for r in sent], width=0.4, label="to clients")
        ax.bar([v + 0.2 for v in x], [r["comm_up_bytes"] / MB for r in sent], width=0.4, label="from clients")
        total = ax.twinx()
        total.plot(
            x,
            [(r["comm_total_down_bytes"] + r["comm_total_up_bytes"]) / MB for r in sent],
            color="black",
            marker="o",
            label="total so far",
        )
        ax.set(xlabel="round", ylabel="MB in the round", title="Adapter bytes sent (tensor payload)")
        total.set_ylabel("MB in total")
        ax.legend(fontsize=7, loc="upper left")
        save(fig, "comm.png")

    private = [r for r in round_rows(metrics) if "privacy" in r]
    if private:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, epsilons in epsilon_series(private).items():
            ax.plot(
                [r["round"] for r in private], epsilons, marker="o", linewidth=3 if label == "run" else 1, label=label
            )
        ax.set(xlabel="round", ylabel="epsilon (unbounded: not drawn)", title="Privacy spent (RDP accountant)")
        ax.legend(fontsize=7)
        save(fig, "epsilon.png")
    return written


def epsilon_series(rows: list[dict]) -> dict[str, list]:
    """Epsilon per round for the run, the server and each client (NaN where unbounded, so it is not drawn)."""

    def value(part):
        return math.nan if part is None or part["epsilon"] is None else part["epsilon"]

    series = {"run": [value(r["privacy"]) for r in rows]}
    if "server" in rows[-1]["privacy"]:
        series["server"] = [value(r["privacy"].get("server")) for r in rows]
    for client_id in sorted(rows[-1]["privacy"].get("clients", {}), key=int):
        series[f"client {client_id}"] = [value(r["privacy"].get("clients", {}).get(client_id)) for r in rows]
    return series
