"""The round loop with real (tiny) clients and a faulty one: bad updates are dropped, rounds go on."""
from __future__ import annotations

import json

import pytest
import torch

import main_simple_fl
from flb.config import load_config
from flb.types import ClientUpdate


class CorruptingClient:
    """A real client whose update is damaged on the way out, as a buggy or hostile party would send."""

    def __init__(self, inner, damage):
        self.inner, self.damage = inner, damage
        self.client_id, self.num_examples, self.data_digest = inner.client_id, inner.num_examples, inner.data_digest

    def fit(self, global_adapter, round) -> ClientUpdate:
        update = self.inner.fit(global_adapter, round)
        self.damage(update.tensors)
        return update

    def __getattr__(self, name):  # privacy_spent, state_dict, load_state_dict: the inner client's
        return getattr(self.inner, name)


def nan_first(tensors):
    first = sorted(tensors)[0]
    tensors[first] = torch.full_like(tensors[first], float("nan"))


def drop_first(tensors):
    del tensors[sorted(tensors)[0]]


def reshape_first(tensors):
    first = sorted(tensors)[0]
    tensors[first] = tensors[first].reshape(-1)


@pytest.mark.parametrize("damage", [nan_first, drop_first, reshape_first])
def test_malformed_update_is_rejected_and_round_completes(tiny_overrides, monkeypatch, damage):
    from server import coordinator as coordinator_module

    built = []

    class Coordinator(coordinator_module.RoundCoordinator):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.clients = [CorruptingClient(c, damage) if c.client_id == 0 else c for c in self.clients]
            built.append(self)

    monkeypatch.setattr(coordinator_module, "RoundCoordinator", Coordinator)
    run_path = main_simple_fl.run(load_config(None, tiny_overrides + ["num_rounds=1", "local_steps=2"]))
    assert built
    rounds = [json.loads(l) for l in (run_path / "metrics.jsonl").read_text().splitlines()]
    last = [m for m in rounds if m["kind"] == "round"][-1]
    assert last["round"] == 1 and last["num_clients"] == 1 and not last.get("skipped")
    assert [r["client_id"] for r in last["rejected"]] == [0]
    assert not (run_path / "round_1" / "updates" / "client_0.safetensors").exists()
    assert (run_path / "round_1" / "updates" / "client_1.safetensors").exists()


def test_round_is_skipped_when_too_few_updates_remain(tiny_overrides, monkeypatch):
    from server import coordinator as coordinator_module

    class Coordinator(coordinator_module.RoundCoordinator):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.clients = [CorruptingClient(c, nan_first) for c in self.clients]

    monkeypatch.setattr(coordinator_module, "RoundCoordinator", Coordinator)
    run_path = main_simple_fl.run(load_config(None, tiny_overrides + ["num_rounds=1", "local_steps=1"]))
    rows = [json.loads(l) for l in (run_path / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    assert last["kind"] == "round" and last["skipped"] is True and len(last["rejected"]) == 2
    assert last["global_digest"] == rows[0]["global_digest"]
