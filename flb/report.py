"""What a run shows at the end: a summary table, summary.json and PNG plots, all from metrics.jsonl."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from flb.rundir import RunDir, write_json_atomic


def round_rows(metrics: list[dict]) -> list[dict]:
    return [m for m in metrics if m["kind"] == "round"]


def summary_table(metrics: list[dict]) -> str:
    """One line per round: clients, eval loss, perplexity, accuracy, mean client train loss, time."""
    train_loss = defaultdict(list)
    for m in metrics:
        if m["kind"] == "client":
            train_loss[m["round"]].append(m["train_loss"])
    lines = [f"{'round':>5} {'clients':>7} {'eval_loss':>9} {'ppl':>8} {'accuracy':>8} {'train_loss':>10} {'time_s':>7}"]
    for row in round_rows(metrics):
        losses = train_loss.get(row["round"])
        lines.append(
            f"{row['round']:>5} {row['num_clients']:>7} {_fmt(row.get('eval_loss'), 9, 4)} {_fmt(row.get('perplexity'), 8, 2)} "
            f"{_fmt(row.get('accuracy'), 8, 3)} {_fmt(sum(losses) / len(losses) if losses else None, 10, 4)} "
            f"{_fmt(row.get('round_time_s', 0) + row.get('eval_time_s', 0), 7, 1)}"
            + ("  skipped" if row.get("skipped") else "")
        )
    return "\n".join(lines)


def _fmt(value, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def write_summary(run: RunDir, final_digest: str) -> dict:
    rows = [r for r in round_rows(run.metrics()) if not r.get("skipped")]
    first, last = rows[0], rows[-1]
    summary = {"run_dir": str(run.path), "rounds": last["round"], "final_adapter": str(run.path / "final_adapter"),
               "final_digest": final_digest, "eval_loss": {"round_0": first.get("eval_loss"), "final": last.get("eval_loss")},
               "accuracy": {"round_0": first.get("accuracy"), "final": last.get("accuracy")}}
    write_json_atomic(run.path / "summary.json", summary)
    return summary


def write_plots(run: RunDir) -> list[Path]:
    """eval_loss.png, accuracy.png (overall and per task family), client_train_loss.png."""
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
        if m["kind"] == "client":
            by_client[m["client_id"]].append((m["round"], m["train_loss"]))
    for client_id, points in sorted(by_client.items()):
        ax.plot(*zip(*points), marker="o", label=f"client {client_id}")
    ax.set(xlabel="round", ylabel="train loss", title="Local training loss per client")
    if by_client:
        ax.legend(fontsize=7)
    save(fig, "client_train_loss.png")
    return written
