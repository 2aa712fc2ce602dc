"""Scale: the cost of a round as the number of registered clients grows, ledger on.

    python -m bench.scale [--registered 10 100 1000 10000] [--per-round 10] [--rounds 3] [--execution processes]
                          [--repeat 3]

Each size runs in its own process on the tiny model (so peak RSS is that run's alone), with two records per
registered client plus the evaluation set, every one of them the same flb-tasks record (so each sampled client's
local steps and the evaluation cost the same at every size, whichever clients are sampled: what differs between
sizes is the registry alone), and the embedded chain. `--repeat N` runs every size N times, the sizes in turn, so
that a slow spell of the machine (on a shared 2-core VM identical runs differ by up to 40 %) falls on all sizes.

Prints a line per size: wall time and time before round 1 (medians over the repeats); the median, lowest and
highest wall and CPU time of all its rounds (training, aggregation, evaluation, saving and recording; the CPU time
is this process's, all threads, the chain's sender included, so other load on the machine inflates it less than
the wall), the median round against the first size's, peak RSS, the run directory's size, and the gas of
registration, data uploads and a round record. With `--execution processes` the clients train in two worker
processes: the CPU columns are then the main process's alone (evaluation, aggregation, recording), and peak RSS
too. The children run with OMP_WAIT_POLICY=PASSIVE: torch's idle threads sleep instead of spinning, whose CPU time
would otherwise swamp the work's and vary by a factor of two from round to round.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

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
    write_jsonl(generate_tasks(1, seed=0) * (registered * RECORDS_PER_CLIENT + EVAL_SIZE), data)
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


def table(runs: dict[int, list[dict]]) -> str:
    """One line per size: the median over its repeats of the run's wall time and time before round 1, the median,
    lowest and highest of every round of every repeat, the median round against the first size's, the highest peak
    RSS, and the first repeat's run directory and gas (the same in every repeat)."""
    header = (
        f"{'registered':>10} {'runs':>4} {'wall s':>7} {'before r1 s':>11} {'round wall s (min-max)':>23} "
        f"{'round CPU s (min-max)':>22} {'wall vs first':>13} {'CPU vs first':>12} {'RSS GB':>7} {'dir MB':>7} "
        f"{'register gas':>13} {'gas/client':>10} {'upload gas':>11} {'round gas':>10}"
    )
    first = next(iter(runs.values()))
    lines = [header]
    for registered, repeats in runs.items():
        walls, cpus = _rounds(repeats, "round_s"), _rounds(repeats, "round_cpu_s")
        r = repeats[0]
        lines.append(
            f"{registered:>10} {len(repeats):>4} {median(x['wall_s'] for x in repeats):>7.1f} "
            f"{median(x['before_round_1_s'] for x in repeats):>11.1f} {_spread(walls):>23} {_spread(cpus):>22} "
            f"{median(walls) / median(_rounds(first, 'round_s')) - 1:>+13.1%} "
            f"{median(cpus) / median(_rounds(first, 'round_cpu_s')) - 1:>+12.1%} "
            f"{max(x['peak_rss_gb'] for x in repeats):>7.2f} {r['run_dir_mb']:>7.1f} {r['register_gas']:>13,} "
            f"{r['register_gas'] // registered:>10,} {r['upload_gas']:>11,} {r['round_gas']:>10,}"
        )
    return "\n".join(lines)


def _rounds(repeats: list[dict], key: str) -> list[float]:
    return [seconds for run in repeats for seconds in run[key]]


def _spread(values: list[float]) -> str:
    return f"{median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registered", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--execution", default="sequential", choices=["sequential", "processes"])
    parser.add_argument("--repeat", type=int, default=1, help="runs of each size, the sizes taken in turn")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat {args.repeat}: give 1 or more runs of each size")
    if args.one:
        print(json.dumps(measure(args.registered[0], args.per_round, args.rounds, args.execution)))
        return
    runs: dict[int, list[dict]] = {registered: [] for registered in args.registered}
    for _ in range(args.repeat):
        for registered in args.registered:
            try:
                runs[registered].append(measure_one(registered, args))
            except RuntimeError as exc:
                print(f"{registered} registered clients: failed ({exc})", file=sys.stderr)
                continue
            print(json.dumps(runs[registered][-1]), file=sys.stderr)
    measured = {registered: repeats for registered, repeats in runs.items() if repeats}
    if not measured:
        sys.exit("bench.scale: every size failed (see the lines above)")
    print(table(measured))


def measure_one(registered: int, args) -> dict:
    return measure_in_child(
        "bench.scale",
        "--registered",
        str(registered),
        "--per-round",
        str(args.per_round),
        "--rounds",
        str(args.rounds),
        "--execution",
        args.execution,
        env={"OMP_WAIT_POLICY": "PASSIVE"},
    )


if __name__ == "__main__":
    main()
