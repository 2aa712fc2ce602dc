"""Round wall time and peak memory of the three execution modes: sequential, batched, processes.

    python -m bench.execution [--models tiny smollm2] [--clients 4 8] [--modes sequential batched processes]
                              [--steps 3] [--rounds 2]

Every (model, clients, mode) is a whole run (`assembly.run`, every client sampled each round, no chain, a
small evaluation) in its own process; this process samples the resident memory of that process and of its children
(the worker processes in processes mode) every 50 ms, and reports the peak of their sum. The round time is the
round's `round_time_s` in metrics.jsonl (sampling, training, validation, aggregation; not the evaluation). The last
round is the steady state: the first also carries batched mode's first client alone (the scheduler's measurement).
Throughput is client steps per second of that round; the speed-up is against sequential at the same model and
clients. Targets (issue 14): batched >= 2x sequential on the tiny model at 8 clients, >= 1.2x on SmolLM2 at 4.
Prints a table and JSON; exits 1 when a run fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.models import MODELS, model_path

TARGETS = {("tiny", 8): 2.0, ("smollm2", 4): 1.2}


def one_run(model: str, clients: int, mode: str, steps: int, rounds: int, work: Path) -> dict:
    """The run, in this process: its rounds' times from metrics.jsonl."""
    import assembly
    from flb.config import load_config

    path = model_path(model, work)
    overrides = [
        f"model.model_path={path}",
        f"output_dir={work / 'runs'}",
        f"num_clients={clients}",
        f"clients_per_round={clients}",
        f"num_rounds={rounds}",
        f"local_steps={steps}",
        "eval.size=8",
        "eval.max_new_tokens=2",
        "chain_record=false",
        f"execution.mode={mode}",
    ]
    if model == "tiny":
        overrides.append("sft.max_length=96")
    started = time.perf_counter()
    run_path = assembly.run(load_config(None, overrides))
    metrics = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]
    round_times = [m["round_time_s"] for m in metrics if m["kind"] == "round" and m["round"] > 0]
    return {"round_time_s": round_times, "run_s": time.perf_counter() - started}


def measured(model: str, clients: int, mode: str, steps: int, rounds: int) -> dict:
    """one_run in a child process, with the peak resident memory of its process tree."""
    import psutil

    command = [
        sys.executable,
        "-m",
        "bench.execution",
        "--one",
        model,
        str(clients),
        mode,
        "--steps",
        str(steps),
        "--rounds",
        str(rounds),
    ]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak, done = [0], threading.Event()

    def sample():
        process = psutil.Process(child.pid)
        while not done.wait(0.05):
            try:
                tree = [process, *process.children(recursive=True)]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                continue

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = child.communicate()
    done.set()
    sampler.join()
    if child.returncode != 0:
        return {"model": model, "clients": clients, "mode": mode, "error": f"exit {child.returncode}"}
    result = json.loads(output.strip().splitlines()[-1])
    steady = result["round_time_s"][-1]
    return {
        "model": model,
        "clients": clients,
        "mode": mode,
        **result,
        "steady_round_s": steady,
        "client_steps_per_s": clients * steps / steady,
        "peak_memory_mb": peak[0] / 1e6,
    }


def with_speedups(rows: list[dict]) -> list[dict]:
    for row in rows:
        base = next(
            (
                r
                for r in rows
                if r["model"] == row["model"]
                and r["clients"] == row["clients"]
                and r["mode"] == "sequential"
                and "error" not in r
            ),
            None,
        )
        if base is not None and "error" not in row:
            row["speedup"] = base["steady_round_s"] / row["steady_round_s"]
            target = TARGETS.get((row["model"], row["clients"])) if row["mode"] == "batched" else None
            if target is not None:
                row["target"], row["target_met"] = target, row["speedup"] >= target
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        f"{'model':<8} {'clients':>7} {'mode':<11} {'rounds_s':>15} {'steps/s':>8} {'speedup':>8} "
        f"{'peak_MB':>8}  target"
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['model']:<8} {row['clients']:>7} {row['mode']:<11} {row['error']}")
            continue
        rounds = "/".join(f"{t:.1f}" for t in row["round_time_s"])
        target = f">= {row['target']}x: {'met' if row['target_met'] else 'MISSED'}" if "target" in row else ""
        lines.append(
            f"{row['model']:<8} {row['clients']:>7} {row['mode']:<11} {rounds:>15} "
            f"{row['client_steps_per_s']:>8.2f} {row.get('speedup', 1.0):>7.2f}x {row['peak_memory_mb']:>8.0f}"
            f"  {target}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--clients", nargs="+", type=int, default=[4, 8])
    parser.add_argument("--modes", nargs="+", default=["sequential", "batched", "processes"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "CLIENTS", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        model, clients, mode = args.one
        with tempfile.TemporaryDirectory(prefix="flb-bench-execution-") as work:
            print(json.dumps(one_run(model, int(clients), mode, args.steps, args.rounds, Path(work))))
        return 0
    rows = with_speedups(
        [
            measured(model, clients, mode, args.steps, args.rounds)
            for model in args.models
            for clients in args.clients
            for mode in args.modes
        ]
    )
    print(table(rows))
    print(json.dumps(rows, indent=1))
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
