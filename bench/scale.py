"""Scale: the cost of a round as the number of registered clients grows, ledger on.

    python -m bench.scale [--registered 10 100 1000 10000] [--per-round 10] [--rounds 3] [--execution processes]

Each size runs in its own process on the tiny model (so peak RSS is that run's alone), with the flb-tasks
generator's records (two per registered client, plus the evaluation set) and the embedded chain. Prints a
table: wall time, time before round 1, each round's wall and CPU time (training, aggregation, evaluation, saving
and recording; the CPU time is this process's, all threads, so other load on the machine does not inflate it),
the mean round CPU time against the first size's, peak RSS, the run directory's size, and the gas of
registration, data uploads and a round record. With `--execution processes` the clients train in two worker
processes: the CPU columns are then the main process's alone (evaluation, aggregation, recording), and peak RSS too.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from bench import measure_in_child

RECORDS_PER_CLIENT = 2
EVAL_SIZE = 8


def measure(registered: int, per_round: int, rounds: int, execution: str = "sequential") -> dict:
    import assembly
    from flb.config import load_config
    from flb.data.tasks import generate_tasks, write_jsonl
    from server import coordinator
    from tests.tiny_model import save_tiny_llama

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="flb-scale-"))
    model_dir = save_tiny_llama(work / "tiny")
    data = work / "tasks.jsonl"
    write_jsonl(generate_tasks(registered * RECORDS_PER_CLIENT + EVAL_SIZE, seed=0), data)
    round_starts, round_walls, round_cpus = _time_calls(coordinator.RoundCoordinator, "run_round")
    config = load_config(
        None,
        [
            f"model.model_path={model_dir}",
            f"output_dir={work / 'runs'}",
            f"dataset_name={data}",
            f"num_clients={registered}",
            f"clients_per_round={per_round}",
            f"num_rounds={rounds}",
            "local_steps=2",
            "sft.batch_size=2",
            "sft.max_length=128",
            f"eval.size={EVAL_SIZE}",
            "eval.max_new_tokens=2",
            f"execution.mode={execution}",
            "execution.workers=2",
        ],
    )
    run_path = assembly.run(config)
    wall = time.perf_counter() - started
    return {
        "registered": registered,
        "wall_s": wall,
        "before_round_1_s": round_starts[0] - started,
        "round_s": round_walls,
        "round_cpu_s": round_cpus,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "run_dir_mb": _size_mb(run_path),
        **_gas(run_path),
    }


def _gas(run_path: Path) -> dict:
    """Gas of the run's confirmed records by kind (registration, data uploads, the largest round record)."""
    from chain.outbox import Outbox

    outbox = Outbox(run_path / "chain" / "outbox.jsonl")
    entries = outbox.entries()
    outbox.close()
    gas = {kind: [e.gas_used or 0 for e in entries if e.kind == kind] for kind in ("register", "upload", "round")}
    return {
        "register_gas": sum(gas["register"]),
        "upload_gas": sum(gas["upload"]),
        "round_gas": max(gas["round"], default=0),
        "transactions": len(entries),
    }


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _time_calls(owner, name: str) -> tuple[list[float], list[float], list[float]]:
    """Patch owner.name to record when each call started, its wall time and this process's CPU time in it (all
    threads: the chain's sender too), which other processes on the machine do not inflate as they do the wall."""
    starts, walls, cpus = [], [], []
    original = getattr(owner, name)

    def timed(*args, **kwargs):
        starts.append(time.perf_counter())
        cpu = time.process_time()
        result = original(*args, **kwargs)
        walls.append(time.perf_counter() - starts[-1])
        cpus.append(time.process_time() - cpu)
        return result

    setattr(owner, name, timed)
    return starts, walls, cpus


def table(results: list[dict]) -> str:
    header = (
        f"{'registered':>10} {'wall s':>8} {'before r1 s':>11} {'rounds wall s':>20} {'rounds CPU s':>20} "
        f"{'CPU vs first':>12} {'RSS GB':>7} {'dir MB':>7} {'register gas':>13} {'gas/client':>10} "
        f"{'upload gas':>11} {'round gas':>10}"
    )
    base = sum(results[0]["round_cpu_s"]) / len(results[0]["round_cpu_s"])
    lines = [header]
    for r in results:
        walls = " / ".join(f"{s:.1f}" for s in r["round_s"])
        cpus = " / ".join(f"{s:.1f}" for s in r["round_cpu_s"])
        mean = sum(r["round_cpu_s"]) / len(r["round_cpu_s"])
        lines.append(
            f"{r['registered']:>10} {r['wall_s']:>8.1f} {r['before_round_1_s']:>11.1f} {walls:>20} "
            f"{cpus:>20} {mean / base - 1:>+12.1%} {r['peak_rss_gb']:>7.2f} {r['run_dir_mb']:>7.1f} "
            f"{r['register_gas']:>13,} {r['register_gas'] // r['registered']:>10,} {r['upload_gas']:>11,} "
            f"{r['round_gas']:>10,}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registered", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--execution", default="sequential", choices=["sequential", "processes"])
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.registered[0], args.per_round, args.rounds, args.execution)))
        return
    results = []
    for registered in args.registered:
        try:
            results.append(
                measure_in_child(
                    "bench.scale",
                    "--registered",
                    str(registered),
                    "--per-round",
                    str(args.per_round),
                    "--rounds",
                    str(args.rounds),
                    "--execution",
                    args.execution,
                )
            )
        except RuntimeError as exc:
            print(f"{registered} registered clients: failed ({exc})", file=sys.stderr)
            continue
        print(json.dumps(results[-1]), file=sys.stderr)
    print(table(results))


if __name__ == "__main__":
    main()
