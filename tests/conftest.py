"""Shared fixtures: a tiny random Llama with SmolLM2's real tokenizer, saved as a local model dir."""
from __future__ import annotations

import os

import pytest

from tests.tiny_model import save_tiny_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """2 layers, hidden 64: one LoRA step takes well under a second; the tokenizer is SmolLM2's own."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def tiny_overrides(tiny_model_dir, tmp_path):
    """--set overrides for a fast federated run on the tiny model."""
    return [f"model.model_path={tiny_model_dir}", f"output_dir={tmp_path / 'runs'}", "num_clients=2",
            "clients_per_round=2", "num_rounds=2", "local_steps=4", "eval.size=12", "eval.max_new_tokens=4",
            "sft.learning_rate=0.01", "sft.max_length=96", "chain_record=false", "model.lora.dropout=0.0"]
