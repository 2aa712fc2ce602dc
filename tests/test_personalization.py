"""Personal adapters (strategy.personalization fedsa and ditto) in whole runs of the tiny model: what crosses to the
server, what stays with each client, the commitment each update carries, exact resume, the own-split losses, and the
combinations refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file

import assembly
from client.personal import PERSONAL_PREFIX, split_shard
from client.sft import SFTClient
from flb.audit.digests import EXTRAS_PREFIX, adapter_digest, adapter_file_digest
from flb.config import load_config
from flb.errors import ConfigError, DataError
from flb.personalization import COMMITMENT
from flb.privacy.private_state import PrivateState
from flb.run.directory import RunDir
from flb.run.summary import round_line
from tests.snapshots import run_and_resume_after_round_1
from tests.tiny_model import tiny_run_overrides

FAST = ["local_steps=2", "eval.size=4", "eval.batch_size=4", "eval.max_new_tokens=1", "eval.personal_size=4"]


def overrides(model_dir: Path, output: Path, mode: str, *more: str) -> list[str]:
    return tiny_run_overrides(model_dir, output) + FAST + [f"strategy.personalization={mode}", *more]


@pytest.fixture(scope="module")
def fedsa_run(tiny_model_dir, tmp_path_factory):
    """A fedsa run recorded on the embedded chain, and every ClientUpdate its clients returned."""
    updates = []
    end_round = SFTClient.end_round

    def recording(self, *args, **kwargs):
        updates.append(end_round(self, *args, **kwargs))
        return updates[-1]

    output = tmp_path_factory.mktemp("fedsa") / "runs"
    with mock.patch.object(SFTClient, "end_round", recording):
        run_path = assembly.run(load_config(None, overrides(tiny_model_dir, output, "fedsa", "chain_record=true")))
    return run_path, updates


@pytest.fixture(scope="module")
def ditto_runs(tiny_model_dir, tmp_path_factory):
    """(a ditto run, a copy of its directory as it stood after round 1 resumed to the end)."""
    root = tmp_path_factory.mktemp("ditto")
    config = load_config(None, overrides(tiny_model_dir, root / "runs", "ditto", "strategy.ditto.lam=0.5"))
    return run_and_resume_after_round_1(config, root / "after-round-1")


def personal_part(run_path: Path, client_id: int) -> dict:
    """Client `client_id`'s personal part as its private state holds it after the run's last round."""
    tensors = PrivateState(RunDir.open(run_path).private_dir(f"client_{client_id}")).latest()["tensors"]
    return {n.removeprefix(PERSONAL_PREFIX): t for n, t in tensors.items() if n.startswith(PERSONAL_PREFIX)}


def client_rows(run_path: Path) -> list[dict]:
    return [m for m in RunDir.open(run_path).metrics() if m["kind"] == "client"]


def test_fedsa_sends_lora_a_only_and_the_global_b_stays_zero(fedsa_run, capsys):
    """What crosses: each ClientUpdate and each update file hold LoRA A and the commitment, no LoRA B; the global
    adapter's B stays zero (the global model alone is the base), its A moves; each client's B is its own, and the
    audit recomputes every round from the files."""
    from chain import explorer

    run_path, updates = fedsa_run
    assert len(updates) == 4  # 2 clients x 2 rounds
    for update in updates:
        assert not [n for n in update.tensors if "lora_B" in n] and any("lora_A" in n for n in update.tensors)
        assert set(update.extras) == {COMMITMENT}
    files = sorted(run_path.glob("round_*/updates/*.safetensors"))
    assert len(files) == 4
    for path in files:
        names = set(load_file(path))
        assert not [n for n in names if "lora_B" in n] and EXTRAS_PREFIX + COMMITMENT in names
    initial, final = (load_file(run_path / f"round_{r}" / "adapter_model.safetensors") for r in (0, 2))
    assert all(not t.any() for n, t in final.items() if "lora_B" in n)
    assert any(not torch.equal(t, initial[n]) for n, t in final.items() if "lora_A" in n)
    own = [personal_part(run_path, client_id) for client_id in (0, 1)]
    assert set(own[0]) == {n for n in final if "lora_B" in n}
    assert all(t.any() for t in own[0].values()) and adapter_digest(own[0]) != adapter_digest(own[1])
    assert explorer.main([str(run_path), "--verify", "--recompute"]) == 0, capsys.readouterr().out


def test_ditto_personal_adapters_are_their_own_and_resume_bit_for_bit(ditto_runs):
    uninterrupted, resumed = ditto_runs
    final = load_file(uninterrupted / "final_adapter" / "adapter_model.safetensors")
    own = [personal_part(uninterrupted, client_id) for client_id in (0, 1)]
    assert set(own[0]) == set(final)
    assert len({adapter_digest(final), adapter_digest(own[0]), adapter_digest(own[1])}) == 3
    for client_id in (0, 1):
        assert adapter_digest(personal_part(resumed, client_id)) == adapter_digest(own[client_id])
    assert adapter_file_digest(resumed / "final_adapter") == adapter_digest(final)
    signed = [[(r["round"], r["digest"], r["personal"]) for r in client_rows(path)] for path in ditto_runs]
    assert signed[0] == signed[1]  # each update and own-split loss of round 2 too


@pytest.mark.parametrize("mode", ["fedsa", "ditto"])
def test_each_update_commits_to_its_personal_part_which_opens_it(mode, fedsa_run, ditto_runs):
    """sha256(salt || digest of the personal part) sits in the update file, fresh each round; the client's kept
    opening (salt, digest) recomputes it from its personal adapter, and a tampered adapter does not."""
    run_path = fedsa_run[0] if mode == "fedsa" else ditto_runs[0]
    private = PrivateState(RunDir.open(run_path).private_dir("client_0"))
    committed = [
        bytes(
            load_file(run_path / f"round_{r}" / "updates" / "client_0.safetensors")[EXTRAS_PREFIX + COMMITMENT].tolist()
        )
        for r in (1, 2)
    ]
    assert committed[0] != committed[1]
    opening = private.openings()[committed[1].hex()]
    part = personal_part(run_path, 0)
    assert opening["digest"] == adapter_digest(part) and opening["what"] == "round 2 personal adapter"

    def opens(state: dict) -> bool:
        return (
            hashlib.sha256(bytes.fromhex(opening["salt"]) + bytes.fromhex(adapter_digest(state))).digest()
            == (committed[1])
        )

    name = sorted(part)[0]
    assert opens(part) and not opens({**part, name: part[name] + 1e-3})


def test_each_client_reports_its_own_split_losses_in_metrics_log_and_plots(fedsa_run, ditto_runs):
    """Per client and round: the loss of the global adapter it received and of its personal one on the 4 records it
    holds out (and trains without). Under fedsa the global adapter is the base model: the same loss every round."""
    for run_path in (fedsa_run[0], ditto_runs[0]):
        rows = client_rows(run_path)
        assert [(r["round"], r["client_id"]) for r in rows] == [(1, 0), (1, 1), (2, 0), (2, 1)]
        for row in rows:
            assert row["personal"]["held_out"] == 4
            assert row["personal"]["personal_loss"] != row["personal"]["global_loss"]
            assert {row["personal"]["personal_accuracy"], row["personal"]["global_accuracy"]} <= {0, 0.25, 0.5, 0.75, 1}
        metrics = RunDir.open(run_path).metrics()
        last = [m for m in rows if m["round"] == 2]
        mean = {k: sum(m["personal"][k] for m in last) / 2 for k in ("personal_loss", "global_loss")}
        line = round_line([m for m in metrics if m["kind"] == "round"][-1], metrics, 2)
        assert f"own split: personal {mean['personal_loss']:.4f} vs global {mean['global_loss']:.4f} (accuracy " in line
        assert (run_path / "plots" / "personal.png").stat().st_size > 1000
    fedsa = client_rows(fedsa_run[0])
    assert [r["personal"]["global_loss"] for r in fedsa if r["client_id"] == 0] == [
        fedsa[0]["personal"]["global_loss"]
    ] * 2
    ditto = client_rows(ditto_runs[0])
    assert ditto[0]["personal"]["global_loss"] != ditto[2]["personal"]["global_loss"]  # the global adapter trained


def test_a_client_trains_on_its_shard_without_the_records_it_holds_out(tiny_model_dir, tmp_path):
    from assembly.build import build_data

    config = load_config(None, overrides(tiny_model_dir, tmp_path, "ditto"))
    shards, _ = build_data(config)
    train, held_out = split_shard(shards[0], 0, 4)
    assert train + held_out == shards[0] and len(held_out) == 4
    with pytest.raises(DataError, match=r"^client 3: its shard has 4 records .* lower eval.personal_size"):
        split_shard(shards[0][:4], 3, 4)


REFUSED = {
    "execution.mode": ["execution.mode=batched"],
    "mode": ["mode=split"],
    "client.objective": ["client.objective=dpo"],
    "client.local_dp": ["client.local_dp=true", "client.dp.mode=dpsgd"],
    "strategy.name": ["strategy.name=fedbuff", "execution.mode=processes"],
    "strategy.lora_aggregation": ["strategy.lora_aggregation=flexlora", "model.lora.client_ranks=[4, 8]"],
}
REFUSED_WITH_FEDSA = {
    "strategy.name": ["strategy.name=dp_fixed_clipping"],
    "strategy.name ": ["strategy.name=scaffold"],
    "strategy.lora_aggregation": ["strategy.lora_aggregation=svd"],
    "strategy.lora_aggregation ": ["strategy.lora_aggregation=ffa"],
    "comm.compression": ["comm.compression=int8"],
}
CASES = [("ditto", key, sets) for key, sets in REFUSED.items()] + [
    ("fedsa", key.strip(), sets) for key, sets in REFUSED_WITH_FEDSA.items()
]


@pytest.mark.parametrize("mode, key, sets", CASES, ids=[f"{m}-{' '.join(s)}" for m, _, s in CASES])
def test_what_cannot_stay_exact_or_private_is_refused_in_one_line(mode, key, sets):
    with pytest.raises(ConfigError) as refused:
        load_config(None, [f"strategy.personalization={mode}", *sets])
    message = str(refused.value)
    assert message.startswith(f"{key}: invalid value") and "strategy.personalization" in message
    assert "\n" not in message


def test_ditto_with_server_dp_and_a_flower_fleet_refused(tiny_model_dir, tmp_path):
    """ditto keeps the global adapter what it is without personalization, so server DP still wraps it; a Flower fleet
    is refused before anything is built."""
    load_config(None, ["strategy.personalization=ditto", "strategy.name=dp_fixed_clipping"])
    config = load_config(None, overrides(tiny_model_dir, tmp_path, "ditto"))
    with pytest.raises(ConfigError, match=r"^strategy.personalization: ditto does not run on Flower") as refused:
        assembly.run(config, fleet=object())
    assert "\n" not in str(refused.value) and not list(tmp_path.iterdir())


def test_worker_processes_train_the_same_personal_adapters(ditto_runs, tiny_model_dir, tmp_path):
    """execution.mode processes: each client's personal part travels in its private directory, as SCAFFOLD's
    variate does; the run ends where the in-process one does, personal adapters and losses included."""
    config = load_config(
        None,
        overrides(tiny_model_dir, tmp_path, "ditto", "strategy.ditto.lam=0.5", "execution.mode=processes")
        + ["execution.workers=1"],
    )
    run_path = assembly.run(config)
    uninterrupted = ditto_runs[0]
    assert adapter_file_digest(run_path / "final_adapter") == adapter_file_digest(uninterrupted / "final_adapter")
    for client_id in (0, 1):
        assert adapter_digest(personal_part(run_path, client_id)) == adapter_digest(
            personal_part(uninterrupted, client_id)
        )
    assert [r["personal"] for r in client_rows(run_path)] == [r["personal"] for r in client_rows(uninterrupted)]
    assert json.loads((run_path / "summary.json").read_text())["final_digest"] == adapter_file_digest(
        run_path / "final_adapter"
    )
