"""Wall time to a target eval loss with stragglers: synchronous rounds, rounds with a deadline, and FedBuff.

    python -m bench.stragglers [--model tiny|smollm2] [--clients 8] [--slow 2] [--slowdown 5] [--rounds 6]
                               [--steps 5] [--workers N] [--deadline-s S] [--target-loss L]

Every run: `execution.mode: processes` (`--workers` worker processes, by default one per client, as if each had its
own machine; a slow client waits out its slowdown in its worker), the ledger off; the last `--slow` clients are
`--slowdown` times slower (simulation.client_speed). First the synchronous run (every client each round, every round
waiting for the slow clients), then the same with `server.round_deadline_s` (default: 1.5 x the synchronous run's
median round time without the slow clients' share, see deadline_from) and `server.min_fit_fraction` = the fast
clients' share, then `strategy.name: fedbuff` with every client training at once and a round every
`strategy.fedbuff.buffer_size` = the fast clients' count arrivals, for as many rounds as give the synchronous run's
number of updates. The wall time to the target is the sum of round_time_s and eval_time_s up to the first round
whose eval loss is at or below it (default: the synchronous run's eval loss after half its rounds). Prints a table
and JSON; a run that fails ends it with its error.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from bench.models import MODELS, model_path


def one_run(args, work: Path, deadline_s: float | None = None, fedbuff: bool = False) -> dict:
    """The run: its rounds' eval loss and times, and its clients' wall times."""
    import assembly
    from flb.config import load_config

    model = model_path(args.model, work)
    speeds = [1.0] * (args.clients - args.slow) + [float(args.slowdown)] * args.slow
    overrides = [
        f"model.model_path={model}",
        f"output_dir={work / 'runs'}",
        f"num_clients={args.clients}",
        f"clients_per_round={args.clients}",
        f"local_steps={args.steps}",
        "chain_record=false",
        "execution.mode=processes",
        f"execution.workers={args.workers or args.clients}",
        f"simulation.client_speed=[{', '.join(map(str, speeds))}]",
        "eval.size=16",
        "eval.max_new_tokens=4",
    ]
    if args.model == "tiny":
        overrides += ["sft.max_length=96", "sft.learning_rate=0.01"]
    if deadline_s is not None:
        fraction = (args.clients - args.slow) / args.clients
        overrides += [f"server.round_deadline_s={deadline_s}", f"server.min_fit_fraction={fraction}"]
    fast = args.clients - args.slow
    if fedbuff:  # the synchronous run's updates, `fast` at a time
        overrides += ["strategy.name=fedbuff", f"strategy.fedbuff.buffer_size={fast}", "server.min_clients=1"]
        overrides.append(f"num_rounds={-(-args.rounds * args.clients // fast)}")
    else:
        overrides.append(f"num_rounds={args.rounds}")
    run_path = assembly.run(load_config(None, overrides))
    rows = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]
    return {
        "rounds": [r for r in rows if r["kind"] == "round"],
        "clients": [r for r in rows if r["kind"] == "client"],
    }


def deadline_from(synchronous: dict, args) -> float:
    """1.5 x the time the fast clients take in a round: their median wall time, in as many waves as the workers
    need for them."""
    fast = [c["wall_time_s"] for c in synchronous["clients"] if c["client_id"] < args.clients - args.slow]
    waves = -(-(args.clients - args.slow) // (args.workers or args.clients))
    return round(1.5 * waves * statistics.median(fast), 1)


def time_to(run: dict, target: float) -> tuple[float | None, int | None]:
    """(wall seconds, round) at the first round whose eval loss is at or below `target`; (None, None) if none is."""
    elapsed = 0.0
    for row in run["rounds"]:
        elapsed += row.get("round_time_s", 0.0) + row.get("eval_time_s", 0.0)
        if row["eval_loss"] <= target:
            return elapsed, row["round"]
    return None, None


def summary(name: str, run: dict, target: float) -> dict:
    seconds, round = time_to(run, target)
    rounds = [r for r in run["rounds"] if r["round"] > 0]
    return {
        "mode": name,
        "seconds_to_target": seconds,
        "round_reached": round,
        "mean_round_s": statistics.mean(r["round_time_s"] for r in rounds),
        "late_per_round": statistics.mean(len(r.get("late", [])) for r in rounds),
        "mean_staleness": statistics.mean(
            c["round"] - 1 - c.get("start_round", c["round"] - 1) for c in run["clients"]
        ),
        "final_eval_loss": rounds[-1]["eval_loss"],
    }


def table(rows: list[dict], target: float) -> str:
    lines = [
        f"target eval loss {target:.4f}",
        f"{'mode':<12} {'s to target':>12} {'round':>6} {'mean round s':>13} {'late/round':>11} {'staleness':>10} "
        f"{'final loss':>11}",
    ]
    for row in rows:
        seconds = f"{row['seconds_to_target']:.1f}" if row["seconds_to_target"] is not None else "not reached"
        lines.append(
            f"{row['mode']:<12} {seconds:>12} {row['round_reached'] or '-':>6} {row['mean_round_s']:>13.1f} "
            f"{row['late_per_round']:>11.1f} {row['mean_staleness']:>10.2f} {row['final_eval_loss']:>11.4f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=MODELS)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--slow", type=int, default=2)
    parser.add_argument("--slowdown", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--workers", type=int, help="worker processes (default: one per client)")
    parser.add_argument("--deadline-s", type=float)
    parser.add_argument("--target-loss", type=float)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="flb-bench-stragglers-") as work:
        synchronous = one_run(args, Path(work) / "synchronous", None)
        deadline_s = args.deadline_s or deadline_from(synchronous, args)
        with_deadline = one_run(args, Path(work) / "deadline", deadline_s)
        buffered = one_run(args, Path(work) / "fedbuff", fedbuff=True)
    half = synchronous["rounds"][(args.rounds + 1) // 2]
    target = args.target_loss if args.target_loss is not None else half["eval_loss"]
    rows = [
        summary("synchronous", synchronous, target),
        {**summary("deadline", with_deadline, target), "deadline_s": deadline_s},
        summary("fedbuff", buffered, target),
    ]
    print(table(rows, target))
    print(f"deadline: {deadline_s} s, min_fit_fraction {(args.clients - args.slow) / args.clients:g}")
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
