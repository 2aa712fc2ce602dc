"""Round overhead of the coordinator: N clients x S steps on the tiny model, at 4 and 16 clients.

    python -m bench.round_overhead [--clients 4 16] [--steps 5] [--rounds 2]

Each client count runs in its own process (so peak RSS is that run's alone) and prints JSON:
round wall time (without evaluation), the sum of client training time, the overhead fraction
(sampling, validation, aggregation, digests, saving, checkpoint), base-model loads and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from bench import measure_in_child


def measure(num_clients: int, steps: int, rounds: int) -> dict:
    import transformers

    import assembly
    from flb.config import load_config
    from server import coordinator
    from tests.tiny_model import save_tiny_llama

    work = Path(tempfile.mkdtemp(prefix="flb-bench-"))
    model_dir = save_tiny_llama(work / "tiny")
    loads = _count_calls(transformers.AutoModelForCausalLM, "from_pretrained")
    round_walls = _time_calls(coordinator.RoundCoordinator, "run_round")
    config = load_config(
        None,
        [
            f"model.model_path={model_dir}",
            f"output_dir={work / 'runs'}",
            f"num_clients={num_clients}",
            f"clients_per_round={num_clients}",
            f"num_rounds={rounds}",
            f"local_steps={steps}",
            "eval.size=8",
            "eval.max_new_tokens=2",
            "sft.max_length=96",
            "chain_record=false",
        ],
    )
    run_path = assembly.run(config)
    metrics = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]
    per_round = []
    for round_number, wall in zip(range(1, rounds + 1), round_walls):
        row = next(m for m in metrics if m["kind"] == "round" and m["round"] == round_number)
        training = sum(m["wall_time_s"] for m in metrics if m["kind"] == "client" and m["round"] == round_number)
        without_eval = wall - row["eval_time_s"]
        per_round.append(
            {
                "round_wall_s": without_eval,
                "client_training_s": training,
                "overhead_fraction": (without_eval - training) / without_eval,
            }
        )
    return {
        "clients": num_clients,
        "steps": steps,
        "rounds": per_round,
        "overhead_fraction_max": max(r["overhead_fraction"] for r in per_round),
        "base_model_loads": loads[0],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _count_calls(owner, name: str) -> list[int]:
    count = [0]
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        count[0] += 1
        return original(*args, **kwargs)

    setattr(owner, name, counted)
    return count


def _time_calls(owner, name: str) -> list[float]:
    walls = []
    original = getattr(owner, name)

    def timed(*args, **kwargs):
        started = time.perf_counter()
        result = original(*args, **kwargs)
        walls.append(time.perf_counter() - started)
        return result

    setattr(owner, name, timed)
    return walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.clients[0], args.steps, args.rounds)))
        return
    results = [
        measure_in_child(
            "bench.round_overhead", "--clients", str(clients), "--steps", str(args.steps), "--rounds", str(args.rounds)
        )
        for clients in args.clients
    ]
    print(
        json.dumps(
            {"benchmark": "round_overhead", "model": "tiny random Llama (2 layers, hidden 64)", "results": results},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
