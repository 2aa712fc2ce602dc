"""The adversary's side of the privacy claims: what someone holding the published run directory (and the
ledger) can and cannot do. Each test fails on an implementation whose DP randomness derives from public values.
"""

from __future__ import annotations

import json
import re

import pytest

import assembly
from bench.privacy_attack import client_attack, server_attack
from flb.audit.digests import adapter_file_digest, records_digest
from flb.config import load_config

Z, CLIP = 1.0, 0.5
ONE_ROUND = ["num_rounds=1", "local_steps=2", "eval.size=8"]
LOCAL_DP = [
    "client.local_dp=true",
    "client.dp.mode=update",
    f"client.dp.noise_multiplier={Z}",
    f"client.dp.clip_norm={CLIP}",
]
SERVER_DP = ["strategy.name=dp_fixed_clipping", f"server.noise_multiplier={Z}", f"server.clip_threshold={CLIP}"]


def run(overrides):
    return assembly.run(load_config(None, overrides))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """The same one-round federation without DP, with local DP on the update, and with server DP."""
    base = [
        f"model.model_path={tiny_model_dir}",
        f"output_dir={tmp_path_factory.mktemp('runs')}",
        "num_clients=2",
        "clients_per_round=2",
        "eval.max_new_tokens=4",
        "sft.learning_rate=0.01",
        "sft.max_length=96",
        "chain_record=false",
        "model.lora.dropout=0.0",
    ] + ONE_ROUND
    return {"plain": run(base), "local": run(base + LOCAL_DP), "server": run(base + SERVER_DP)}


@pytest.mark.parametrize("client_id", [0, 1])
def test_regenerating_the_client_noise_from_public_values_recovers_nothing(runs, client_id):
    result = client_attack(runs["local"], runs["plain"], client_id, Z, CLIP)
    assert result["noise"] > 0.1
    # stripped noise would leave a residual near 0; with secret noise the guess is independent: sqrt(2) x the noise
    assert 1.2 < result["residual"] / result["noise"] < 1.6


def test_regenerating_the_server_noise_from_public_values_recovers_nothing(runs):
    result = server_attack(runs["server"], Z, CLIP)
    assert result["noise"] > 0.05
    assert 1.2 < result["residual"] / result["noise"] < 1.6


def test_no_secret_reaches_a_published_file(runs):
    """The generator keys live only in private/; config, metrics, summary, checkpoint never hold them."""
    for run_path in (runs["local"], runs["server"]):
        keys = [json.loads(p.read_text())["random"]["key"] for p in (run_path / "private").rglob("state_round_*.json")]
        assert keys
        published = [p for p in run_path.rglob("*") if p.is_file() and "private" not in p.relative_to(run_path).parts]
        text = "\n".join(p.read_bytes().decode("latin-1") for p in published)
        assert not any(key in text for key in keys)
        assert (run_path / "private").stat().st_mode & 0o077 == 0


def test_two_runs_with_dp_release_different_updates_and_without_dp_identical_ones(runs, tiny_model_dir, tmp_path):
    again = [
        f"model.model_path={tiny_model_dir}",
        f"output_dir={tmp_path}",
        "num_clients=2",
        "clients_per_round=2",
        "eval.max_new_tokens=4",
        "sft.learning_rate=0.01",
        "sft.max_length=96",
        "chain_record=false",
        "model.lora.dropout=0.0",
    ] + ONE_ROUND
    plain_again, local_again = run(again), run(again + LOCAL_DP)
    update = "round_1/updates/client_0.safetensors"
    assert adapter_file_digest(plain_again / update) == adapter_file_digest(runs["plain"] / update)
    assert adapter_file_digest(plain_again / "final_adapter") == adapter_file_digest(runs["plain"] / "final_adapter")
    assert adapter_file_digest(local_again / update) != adapter_file_digest(runs["local"] / update)


def test_under_dp_the_chain_holds_no_raw_update_or_data_digest(tiny_overrides):
    """A chain reader who knows every record but one cannot test membership by recomputing a digest."""
    run_path = run(tiny_overrides + ONE_ROUND + SERVER_DP + ["chain_record=true"])
    config = load_config(None, tiny_overrides + ONE_ROUND)
    raw = {adapter_file_digest(p) for p in (run_path / "round_1" / "updates").glob("*.safetensors")}
    raw |= {records_digest(shard) for shard in assembly.build_data(config)[0]}
    on_chain = set(re.findall(r"[0-9a-f]{64}", (run_path / "chain" / "trail.json").read_text().lower()))
    assert len(raw) == 4 and not raw & on_chain
    trail = json.loads((run_path / "chain" / "trail.json").read_text())
    recorded = [e["args"] for tx in trail["transactions"] for e in tx["events"] if e["event"] == "RoundRecorded"]
    assert recorded[1]["numExamples"] == [0, 0]  # example counts are not published under DP either


def test_a_sealed_run_hides_who_took_part_each_round_yet_its_server_can_prove_it(tiny_overrides, tmp_path, capsys):
    """chain.record_participants: false: a chain reader sees no round's participants or scores; the server's opening
    shows an auditor every signed update, and a tampered update file is still caught."""
    import shutil

    from chain import explorer

    run_path = run(tiny_overrides + ONE_ROUND + SERVER_DP + ["chain_record=true", "chain.record_participants=false"])
    trail = json.loads((run_path / "chain" / "trail.json").read_text())
    events = [e for tx in trail["transactions"] for e in tx["events"]]
    assert [e["args"]["round"] for e in events if e["event"] == "RoundSealed"] == [0, 1]
    assert not [e for e in events if e["event"] in ("RoundRecorded", "ScoreAdd")]
    round_calls = [tx for tx in trail["transactions"] if tx["function"] == "recordSealedRound"]
    assert len(round_calls) == 2 and "clients" not in json.dumps([tx["args"] for tx in round_calls])

    capsys.readouterr()
    assert explorer.main([str(run_path), "--verify"]) == 0  # the server's and clients' openings are in private/
    audited = capsys.readouterr().out
    public = tmp_path / "published"
    shutil.copytree(run_path, public, ignore=shutil.ignore_patterns("private"))
    assert explorer.main([str(public), "--verify"]) == 0
    assert "round 1: who took part is sealed" in capsys.readouterr().out
    assert "who took part is sealed" not in audited and "0 problems" in audited

    tampered = run_path / "round_1" / "updates" / "client_0.safetensors"
    shutil.copyfile(run_path / "round_1" / "updates" / "client_1.safetensors", tampered)
    assert explorer.main([str(run_path), "--verify"]) == 1
    assert "round 1 client 0" in capsys.readouterr().out
