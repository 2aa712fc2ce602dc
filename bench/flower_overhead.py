"""Per-round time of the Flower path vs the in-process run on the same workload, and bytes per round.

    python -m bench.flower_overhead [--steps 4] [--rounds 2]

Tiny model, 2 clients, the same seed and steps on both paths. The Flower path runs a SuperLink and two
SuperNodes on loopback (insecure), each keeping its client's secrets in its own state-dir under the
benchmark's work folder. Round time excludes evaluation (the coordinator's round_time_s).
Bytes are the messages' array and config payloads (Flower's framing not counted), as the fleet logs them.
Both SuperNodes share this machine, so every process of both paths runs one torch thread (OMP_NUM_THREADS=1 unless
set): two nodes training at once with a thread per core each made every step about 10x slower here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

_TRAFFIC = re.compile(r"round (\d+): (\d+) bytes to SuperNodes, (\d+) bytes back")


def overrides(model_dir: Path, runs: Path, steps: int, rounds: int) -> list[str]:
    return [
        f"model.model_path={model_dir}",
        f"output_dir={runs}",
        "num_clients=2",
        "clients_per_round=2",
        f"num_rounds={rounds}",
        f"local_steps={steps}",
        "eval.size=8",
        "eval.max_new_tokens=2",
        "sft.max_length=96",
        "chain_record=false",
        "model.lora.dropout=0.0",
    ]


def round_times(run_path: Path) -> list[float]:
    records = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]
    return [r["round_time_s"] for r in records if r["kind"] == "round" and r["round"] > 0]


def in_process(model_dir: Path, work: Path, steps: int, rounds: int) -> Path:
    import assembly
    from flb.config import load_config

    with contextlib.redirect_stdout(sys.stderr):  # its summary table; stdout is this benchmark's JSON
        return assembly.run(load_config(None, overrides(model_dir, work / "in-process", steps, rounds)))


def flower(model_dir: Path, work: Path, steps: int, rounds: int) -> Path:
    from tests.flower_loopback import Loopback

    loopback = Loopback(work)
    try:
        loopback.start_superlink()
        for partition in range(2):
            loopback.start_supernode(partition, 2)
        flb_args = [a for o in overrides(model_dir, work / "flower", steps, rounds) for a in ("--set", o)]
        if loopback.flwr_run(flb_args, timeout_s=600).wait() != 0:
            raise RuntimeError(f"the Flower run failed:\n{loopback.logs()}")
    finally:
        loopback.stop_all()
    return (work / "flower" / "latest").resolve()


def summary(run_path: Path) -> dict:
    times = round_times(run_path)
    return {"round_time_s": times, "round_time_s_mean": statistics.mean(times)}


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads; the SuperNodes inherit it
    from tests.tiny_model import save_tiny_llama

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flb-flower-bench-"))
    model_dir = save_tiny_llama(work / "tiny")
    local, remote = (
        in_process(model_dir, work, args.steps, args.rounds),
        flower(model_dir, work, args.steps, args.rounds),
    )
    traffic = [
        {"round": int(r), "bytes_to_nodes": int(out), "bytes_from_nodes": int(back)}
        for r, out, back in _TRAFFIC.findall((remote / "run.log").read_text())
    ]
    from flb.audit.digests import adapter_file_digest

    print(
        json.dumps(
            {
                "benchmark": "flower_overhead",
                "model": "tiny random Llama (2 layers, hidden 64)",
                "clients": 2,
                "local_steps": args.steps,
                "rounds": args.rounds,
                "in_process": summary(local),
                "flower": summary(remote),
                "flower_over_in_process": summary(remote)["round_time_s_mean"] / summary(local)["round_time_s_mean"],
                "bytes_per_round": traffic,
                "same_final_digest": adapter_file_digest(local / "final_adapter")
                == adapter_file_digest(remote / "final_adapter"),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
