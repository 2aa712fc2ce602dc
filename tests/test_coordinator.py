"""The round loop with real (tiny) clients and a hostile or broken one: bad updates are rejected with their reason,
the attacker never moves the global adapter, the rounds go on; a run that aggregates nothing fails."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

import assembly
from flb.adapters.arithmetic import weighted_average
from flb.audit.digests import adapter_digest, adapter_file_digest
from flb.config import load_config
from flb.errors import RunFailed
from flb.types import ClientUpdate


class CorruptingClient:
    """A real client whose update is altered on the way out, as a buggy or hostile party would send it."""

    def __init__(self, inner, damage):
        self.inner, self.damage = inner, damage

    def fit(self, global_adapter, round, extras=None) -> ClientUpdate:
        return self.damage(self.inner.fit(global_adapter, round, extras), round)

    def __getattr__(self, name):  # client_id, num_examples, address, privacy_spent: the inner client's
        return getattr(self.inner, name)


def with_tensors(update, tensors):
    return dataclasses.replace(update, tensors=tensors, digest=adapter_digest(tensors))


def nan_first(update, round):
    first = sorted(update.tensors)[0]
    update.tensors[first] = torch.full_like(update.tensors[first], float("nan"))
    return update


def rotate_attacks(update, round):
    """Round 1: huge values (digest kept consistent); 2: a claim of 10^12 examples; 3: posing as client 0;
    4: a stale update from the round before."""
    if round == 1:
        return with_tensors(update, {n: t + 1e6 for n, t in update.tensors.items()})
    if round == 2:
        return dataclasses.replace(update, num_examples=10**12)
    if round == 3:
        return dataclasses.replace(update, client_id=0)
    return dataclasses.replace(update, round=round - 1)


def run_with(monkeypatch, overrides, damage, victims):
    from server import coordinator as coordinator_module

    class Coordinator(coordinator_module.RoundCoordinator):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.clients = [CorruptingClient(c, damage) if c.client_id in victims else c for c in self.clients]

    monkeypatch.setattr(coordinator_module, "RoundCoordinator", Coordinator)
    return assembly.run(load_config(None, overrides))


def rows(run_path):
    return [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]


def test_an_attacker_is_rejected_every_round_and_never_moves_the_global_adapter(tiny_overrides, monkeypatch):
    run_path = run_with(
        monkeypatch,
        tiny_overrides + ["num_clients=3", "clients_per_round=3", "num_rounds=4", "local_steps=1"],
        rotate_attacks,
        victims={2},
    )
    rounds = [r for r in rows(run_path) if r["kind"] == "round"][1:]
    reasons = [r["rejected"][0]["reason"] for r in rounds]
    assert all(r["num_clients"] == 2 and [x["client_id"] for x in r["rejected"]] == [2] for r in rounds)
    assert "update norm" in reasons[0] and "training examples" in reasons[1]
    assert "asked for round 3" in reasons[2] and "asked for round 4" in reasons[3]
    for number in range(1, 5):  # each global adapter is the FedAvg of the two honest updates alone
        folder = run_path / f"round_{number}"
        assert sorted(p.name for p in (folder / "updates").iterdir()) == [
            "client_0.safetensors",
            "client_1.safetensors",
        ]
        honest = [(load_file(str(folder / "updates" / f"client_{i}.safetensors")), 1) for i in (0, 1)]
        shard_sizes = [m["num_examples"] for m in rows(run_path) if m["kind"] == "client" and m["round"] == number]
        mean = weighted_average([(state, size) for (state, _), size in zip(honest, shard_sizes)])
        assert adapter_digest(mean) == adapter_file_digest(folder)
    final = load_file(str(run_path / "final_adapter" / "adapter_model.safetensors"))
    assert max(t.abs().max().item() for t in final.values()) < 10


@pytest.mark.parametrize("damage", [nan_first])
def test_a_malformed_update_is_rejected_and_the_round_completes(tiny_overrides, monkeypatch, damage):
    run_path = run_with(monkeypatch, tiny_overrides + ["num_rounds=1", "local_steps=2"], damage, victims={0})
    last = [m for m in rows(run_path) if m["kind"] == "round"][-1]
    assert last["round"] == 1 and last["num_clients"] == 1 and not last.get("skipped")
    assert [r["client_id"] for r in last["rejected"]] == [0]
    assert not (run_path / "round_1" / "updates" / "client_0.safetensors").exists()


def test_a_run_whose_every_round_is_skipped_fails_after_saving_its_files(tiny_overrides, monkeypatch, tmp_path):
    with pytest.raises(RunFailed, match="every round was skipped"):
        run_with(monkeypatch, tiny_overrides + ["num_rounds=1", "local_steps=1"], nan_first, victims={0, 1})
    run_path = (tmp_path / "runs" / "latest").resolve()
    last = rows(run_path)[-1]
    assert last["kind"] == "round" and last["skipped"] is True and len(last["rejected"]) == 2
    assert last["global_digest"] == rows(run_path)[0]["global_digest"]
    assert (run_path / "final_adapter" / "adapter_model.safetensors").is_file()


def test_a_client_that_joins_late_is_registered_then_sampled_and_verifies_only_if_the_auditor_lists_it(
    tiny_overrides, monkeypatch, capsys
):
    """As on a Flower fleet whose second node joins before round 2: clients 0 and 2 are registered at round 0 (client
    1's absence holds back no higher id), client 1 before round 2, and only then sampled; the chain says when, so a
    verifier without the participants' list flags it (it could be a key the server added) and one with the list
    accepts the run and recomputes every round from the files named by client id, though the chain registered client 2
    before client 1."""
    from chain import explorer
    from chain.trail import read_trail
    from server import coordinator as coordinator_module

    calls = []

    class LateJoin(coordinator_module.RoundCoordinator):
        def __post_init__(self):
            super().__post_init__()
            # asked at round 0, then before each round: client 1's node joins before round 2
            self.roster = lambda: calls.append(None) or [c for c in self.clients if len(calls) > 2 or c.client_id != 1]

    monkeypatch.setattr(coordinator_module, "RoundCoordinator", LateJoin)
    overrides = tiny_overrides + ["num_clients=3", "clients_per_round=2", "num_rounds=3", "chain_record=true", "seed=3"]
    run_path = assembly.run(load_config(None, overrides))
    sampled = {r["round"] for r in rows(run_path) if r["kind"] == "client" and r["client_id"] == 1}
    assert sampled == {2, 3}  # not before it joined; drawn afterwards (seed 3 draws it in both)
    assert explorer.main([str(run_path), "--verify"]) == 1
    assert "was registered before round 2, after the run began" in capsys.readouterr().out
    accounts = read_trail(run_path)["accounts"]
    assert accounts["ids"] == [0, 2, 1]  # in registration order
    listed = run_path.parent / "participants.txt"
    listed.write_text("\n".join(accounts["clients"]) + "\n")
    assert explorer.main([str(run_path), "--verify", "--recompute", "--clients", str(listed)]) == 0, (
        capsys.readouterr().out
    )
    # a server that swaps two clients' ids in its list points each address at the other's files: that fails
    for path in (run_path / "chain" / "accounts.json", run_path / "chain" / "trail.json"):
        written = json.loads(path.read_text())
        (written["accounts"] if "accounts" in written else written)["ids"] = [0, 1, 2]
        path.write_text(json.dumps(written))
    assert explorer.main([str(run_path), "--verify", "--recompute", "--clients", str(listed)]) == 1
    assert "client 2" in capsys.readouterr().out
