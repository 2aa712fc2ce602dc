"""What each codec of comm.compression saves on the wire, and what it costs the model.

    python -m bench.compression [--model smollm2|tiny] [--clients 4] [--rounds 3] [--steps 10]
                                [--codecs none bf16 int8 nf4 topk] [--topk-fraction 0.1]

One whole run per codec (`assembly.run`, every client sampled each round, the ledger off, the default evaluation),
the clients' updates sent under the codec and the global adapter under the same codec where it applies
(comm.broadcast_compression; top-k sends a change, so its global adapter is sent whole). Printed per codec: MB per
round up (clients to server) and down (server to clients) as the server counts them (metrics.jsonl's
comm_up_bytes and comm_down_bytes: tensor bytes as sent), each relative to none, and the final eval loss and
exact-match accuracy with their difference from none. Prints a table and JSON; exits 1 when a run fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench.models import MODELS, model_path
from flb.adapters.compression import CODECS
from flb.config.sections import BROADCAST_CODECS

MB = 10**6


def one_run(codec: str, args, work: Path) -> dict:
    """The run under `codec`: its MB per round each way and its last round's evaluation."""
    import assembly
    from flb.config import load_config

    model = model_path(args.model, work)
    overrides = [
        f"model.model_path={model}",
        f"output_dir={work / 'runs'}",
        f"num_clients={args.clients}",
        f"clients_per_round={args.clients}",
        f"num_rounds={args.rounds}",
        f"local_steps={args.steps}",
        "chain_record=false",
        f"comm.compression={codec}",
        f"comm.broadcast_compression={codec if codec in BROADCAST_CODECS else 'none'}",
        f"comm.topk_fraction={args.topk_fraction}",
    ]
    run_path = assembly.run(load_config(None, overrides))
    rounds = [
        json.loads(line)
        for line in (run_path / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "round" and json.loads(line)["round"] > 0
    ]
    return {
        "codec": codec,
        "up_mb_per_round": sum(r["comm_up_bytes"] for r in rounds) / len(rounds) / MB,
        "down_mb_per_round": sum(r["comm_down_bytes"] for r in rounds) / len(rounds) / MB,
        "eval_loss": [r["eval_loss"] for r in rounds],
        "accuracy": rounds[-1].get("accuracy"),
    }


def relative_to_none(rows: list[dict]) -> list[dict]:
    base = next((r for r in rows if r["codec"] == "none" and "error" not in r), None)
    for row in rows:
        if base is not None and "error" not in row:
            row["up_vs_none"] = row["up_mb_per_round"] / base["up_mb_per_round"]
            row["down_vs_none"] = row["down_mb_per_round"] / base["down_mb_per_round"]
            row["eval_loss_vs_none"] = row["eval_loss"][-1] - base["eval_loss"][-1]
            row["accuracy_vs_none"] = row["accuracy"] - base["accuracy"]
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        f"{'codec':<6} {'up MB/round':>12} {'vs none':>8} {'down MB/round':>14} {'vs none':>8} "
        f"{'eval_loss by round':>26} {'vs none':>8} {'accuracy':>9} {'vs none':>8}"
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['codec']:<6} {row['error']}")
            continue
        losses = " / ".join(f"{loss:.4f}" for loss in row["eval_loss"])
        lines.append(
            f"{row['codec']:<6} {row['up_mb_per_round']:>12.3f} {row.get('up_vs_none', 1):>7.3f}x "
            f"{row['down_mb_per_round']:>14.3f} {row.get('down_vs_none', 1):>7.3f}x {losses:>26} "
            f"{row.get('eval_loss_vs_none', 0):>+8.4f} {row['accuracy']:>9.3f} {row.get('accuracy_vs_none', 0):>+8.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", choices=MODELS)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--codecs", nargs="+", default=list(CODECS), choices=CODECS)
    parser.add_argument("--topk-fraction", type=float, default=0.1)
    args = parser.parse_args(argv)
    rows = []
    for codec in args.codecs:
        with tempfile.TemporaryDirectory(prefix="flb-bench-compression-") as work:
            try:
                rows.append(one_run(codec, args, Path(work)))
            except Exception as exc:  # one codec's failure is a row of the table, not the end of the others
                rows.append({"codec": codec, "error": f"{type(exc).__name__}: {exc}"})
    rows = relative_to_none(rows)
    print(table(rows))
    print(json.dumps(rows, indent=1))
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
