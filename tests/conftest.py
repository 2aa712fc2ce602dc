"""Shared fixtures: a tiny random Llama with SmolLM2's real tokenizer, saved as a local model dir."""
from __future__ import annotations

import os

import pytest

from tests.tiny_model import save_tiny_llama, tiny_run_overrides

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """2 layers, hidden 64: one LoRA step takes well under a second; the tokenizer is SmolLM2's own."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def flower_task(monkeypatch):
    """Flower's Message needs the identity a ServerApp process would have; set it for one test only."""
    from flwr.supercore.task_identity import TaskIdentity

    for attribute, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attribute, value)


@pytest.fixture
def tiny_overrides(tiny_model_dir, tmp_path):
    """--set overrides for a fast federated run on the tiny model."""
    return tiny_run_overrides(tiny_model_dir, tmp_path / "runs")
