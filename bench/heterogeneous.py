"""Heterogeneous federations: clients of different LoRA ranks, and personal adapters.

    python -m bench.heterogeneous [--model smollm2|tiny] [--clients 8] [--rounds 3] [--steps 10] [--alpha 0.1]
                                  [--eval-size 48] [--parts ranks personal]

The generated task data split over `--clients` clients by Dirichlet(`--alpha`) over the task family (non-iid), every
client sampled every round, the ledger off; one whole run (`assembly.run`) per setup.
- ranks: everyone at rank 8, everyone at rank 32, and ranks [4, 8, 16, 32] cycled over the clients under
  strategy.lora_aggregation flexlora and hetlora (the global adapter at 32). lora.alpha is 2 x the global rank in
  every setup, so every adapter has the same scale alpha / r = 2. Printed: eval loss by round, the last round's
  exact-match accuracy, MB per round up and down (metrics.jsonl's comm bytes), the mean lora_aggregation_error.
- personal: strategy.personalization fedsa and ditto: each client's loss and exact-match accuracy on the records it
  holds out of its own shard (eval.personal_size), of the global adapter it received in the last round and of its
  personal adapter after that round, averaged over the clients (client/personal.py measures them on the client).
  Without personalization a client holds nothing out: the global columns stand for it. Each client needs more
  records than eval.personal_size (4): at --alpha 0.1 one of 8 clients gets 2, so run this part at --alpha 0.2.
Prints tables and JSON; exits 1 when a run fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench.models import MODELS, model_path

MB = 10**6
RANK_SETUPS = {
    "all at 8": ["model.lora.r=8", "model.lora.alpha=16"],
    "all at 32": ["model.lora.r=32", "model.lora.alpha=64"],
    "flexlora 4-32": [
        "model.lora.r=32",
        "model.lora.alpha=64",
        "model.lora.client_ranks=[4, 8, 16, 32]",
        "strategy.lora_aggregation=flexlora",
    ],
    "hetlora 4-32": [
        "model.lora.r=32",
        "model.lora.alpha=64",
        "model.lora.client_ranks=[4, 8, 16, 32]",
        "strategy.lora_aggregation=hetlora",
    ],
}
PERSONAL_SETUPS = {mode: [f"strategy.personalization={mode}"] for mode in ("fedsa", "ditto")}


def run_rows(args, work: Path, setup: list[str]) -> list[dict]:
    """metrics.jsonl of one run of `setup` over the shared base overrides."""
    import assembly
    from flb.config import load_config

    overrides = [
        f"model.model_path={model_path(args.model, work)}",
        f"output_dir={work / 'runs'}",
        f"num_clients={args.clients}",
        f"clients_per_round={args.clients}",
        f"num_rounds={args.rounds}",
        f"local_steps={args.steps}",
        f"eval.size={args.eval_size}",
        "partition.method=dirichlet",
        f"partition.alpha={args.alpha}",
        "chain_record=false",
        *setup,
    ]
    run_path = assembly.run(load_config(None, overrides))
    return [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]


def ranks_row(name: str, metrics: list[dict]) -> dict:
    rounds = [m for m in metrics if m["kind"] == "round"]
    trained = rounds[1:]
    return {
        "setup": name,
        "eval_loss": [r["eval_loss"] for r in rounds],
        "accuracy": rounds[-1].get("accuracy"),
        "up_mb_per_round": sum(r["comm_up_bytes"] for r in trained) / len(trained) / MB,
        "down_mb_per_round": sum(r["comm_down_bytes"] for r in trained) / len(trained) / MB,
        "aggregation_error": sum(r["lora_aggregation_error"] for r in trained) / len(trained),
    }


PERSONAL_KEYS = ("global_loss", "personal_loss", "global_accuracy", "personal_accuracy")


def personal_row(name: str, metrics: list[dict]) -> dict:
    """The last round's own-split numbers of every client that reported them (client/personal.py), averaged."""
    last = [m for m in metrics if m["kind"] == "round"][-1]["round"]
    reports = [m["personal"] for m in metrics if m["kind"] == "client" and m["round"] == last and "personal" in m]
    return {
        "setup": name,
        "clients": len(reports),
        **{k: sum(r[k] for r in reports) / len(reports) for k in PERSONAL_KEYS},
    }


def ranks_table(rows: list[dict]) -> str:
    lines = [
        f"{'setup':<14} {'eval_loss by round':>34} {'accuracy':>9} {'up MB/rd':>9} {'down MB/rd':>11} {'agg error':>10}"
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['setup']:<14} {row['error']}")
            continue
        losses = " / ".join(f"{loss:.4f}" for loss in row["eval_loss"])
        lines.append(
            f"{row['setup']:<14} {losses:>34} {row['accuracy']:>9.3f} {row['up_mb_per_round']:>9.3f} "
            f"{row['down_mb_per_round']:>11.3f} {row['aggregation_error']:>10.2e}"
        )
    return "\n".join(lines)


def personal_table(rows: list[dict]) -> str:
    lines = [
        f"{'setup':<8} {'clients':>7} {'global loss':>12} {'personal loss':>14} {'global acc':>11} {'personal acc':>13}"
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['setup']:<8} {row['error']}")
            continue
        lines.append(
            f"{row['setup']:<8} {row['clients']:>7} {row['global_loss']:>12.4f} {row['personal_loss']:>14.4f} "
            f"{row['global_accuracy']:>11.3f} {row['personal_accuracy']:>13.3f}"
        )
    return "\n".join(lines)


PARTS = {"ranks": (RANK_SETUPS, ranks_row, ranks_table), "personal": (PERSONAL_SETUPS, personal_row, personal_table)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", choices=MODELS)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--eval-size", type=int, default=48)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    args = parser.parse_args(argv)
    results, failed = {}, False
    for part in args.parts:
        setups, to_row, to_table = PARTS[part]
        rows = []
        for name, setup in setups.items():
            with tempfile.TemporaryDirectory(prefix="flb-bench-heterogeneous-") as work:
                try:
                    rows.append(to_row(name, run_rows(args, Path(work), setup)))
                except Exception as exc:  # one setup's failure is a row of the table, not the end of the others
                    rows.append({"setup": name, "error": f"{type(exc).__name__}: {exc}"})
        print(to_table(rows))
        results[part] = rows
        failed = failed or any("error" in row for row in rows)
    print(json.dumps(results, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
