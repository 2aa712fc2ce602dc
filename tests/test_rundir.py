"""Run directories: creation refuses bad output_dirs before making anything, config.json is redacted, and a
damaged checkpoint.json, metrics.jsonl or config.json is a one-line RunDirError (a torn last metrics line is
repaired instead)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from flb.config import Config
from flb.errors import RunDirError
from flb.run.directory import RunDir

ADAPTER = {"base_model.model.layers.0.q_proj.lora_A.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3)}


def checkpointed_run(tmp_path, rounds=(0, 1)) -> RunDir:
    """A run directory as the coordinator leaves it after `rounds`: adapters, metrics lines, a checkpoint."""
    run = RunDir.create(tmp_path / "runs", Config().to_dict())
    for round in rounds:
        run.round_dir(round).mkdir()
        save_file(ADAPTER, str(run.round_dir(round) / "adapter_model.safetensors"))
        run.append_metrics({"kind": "client", "round": round, "client": 0}, {"kind": "round", "round": round})
    run.write_checkpoint(rounds[-1], ADAPTER, {"clip_norm": 1.0}, {"0": {"num_examples": 3}})
    return run


def assert_one_line(info, *fragments):
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_config_json_never_holds_rpc_credentials(tmp_path):
    config = Config().to_dict()
    config["chain"]["rpc_url"] = "https://alice:s3cret-pw@rpc.example.org:8545/v1?apikey=k3y&chain=1"
    run = RunDir.create(tmp_path / "runs", config)
    text = (run.path / "config.json").read_text()
    assert "s3cret-pw" not in text and "alice" not in text and "k3y" not in text
    assert run.config()["chain"]["rpc_url"] == "https://***@rpc.example.org:8545/v1?apikey=***&chain=1"
    assert config["chain"]["rpc_url"].startswith("https://alice:")  # the caller's dict is left alone


def test_output_dir_that_is_a_file_is_refused_before_anything_is_made(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(RunDirError) as info:
        RunDir.create(tmp_path / "runs", Config().to_dict())
    assert_one_line(info, "output_dir:", "is a file", "choose another output_dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_output_dir_below_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError) as info:
        RunDir.create(tmp_path / "file" / "runs", Config().to_dict())
    assert_one_line(info, "output_dir: cannot create", "choose a folder you can write to")


def test_a_latest_that_is_not_our_link_is_refused_before_anything_is_made(tmp_path):
    (tmp_path / "runs" / "latest").mkdir(parents=True)
    with pytest.raises(RunDirError) as info:
        RunDir.create(tmp_path / "runs", Config().to_dict())
    assert_one_line(info, "latest", "move it away")
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["latest"]


def test_intact_checkpoint_reads_back(tmp_path):
    checkpoint = checkpointed_run(tmp_path).read_checkpoint()
    assert checkpoint["round"] == 1 and checkpoint["strategy"] == {"clip_norm": 1.0}
    assert torch.equal(next(iter(checkpoint["adapter"].values())), next(iter(ADAPTER.values())))


def test_declarations_are_written_when_clients_join_not_every_round(tmp_path, monkeypatch):
    """checkpoint.json names the file of what the clients declared; with 10,000 registered a round writes neither
    it nor a checkpoint that grows with them, and a client that joins makes a new file (the old one goes)."""
    import flb.run.directory

    run = checkpointed_run(tmp_path)
    declared = {client_id: {"num_examples": 2, "address": f"0x{client_id:040x}"} for client_id in range(10_000)}
    written = []
    real = flb.run.directory.write_atomic
    monkeypatch.setattr(flb.run.directory, "write_atomic", lambda path, *a: written.append(path.name) or real(path, *a))
    for round in (2, 3, 4):
        run.round_dir(round).mkdir()
        save_file(ADAPTER, str(run.round_dir(round) / "adapter_model.safetensors"))
        run.append_metrics({"kind": "round", "round": round})
        if round == 4:
            declared[10_000] = {"num_examples": 3, "address": "0x" + "ab" * 20}
        run.write_checkpoint(round, ADAPTER, {}, declared)
    files = [p.name for p in run.path.glob("declared_*.json")]
    declared_writes = [name for name in written if name.startswith("declared_")]  # rounds 2 and 4, not 3
    assert len(declared_writes) == 2 and declared_writes[1] == files[0] and declared_writes[0] not in files
    assert len(files) == 1 and (run.path / "checkpoint.json").stat().st_size < 2000
    checkpoint = run.read_checkpoint()
    assert checkpoint["round"] == 4 and len(checkpoint["declared"]) == 10_001
    assert checkpoint["declared"]["10000"]["num_examples"] == 3


def test_a_changed_declarations_file_or_an_old_checkpoint_with_them_inline(tmp_path):
    run = checkpointed_run(tmp_path)
    (declared,) = run.path.glob("declared_*.json")
    declared.write_text('{"0": {"num_examples": 300}}')  # a client that claims a larger shard than it declared
    with pytest.raises(RunDirError) as info:
        run.read_checkpoint()
    assert_one_line(info, declared.name, "does not match the digest in checkpoint.json", "directory was modified")
    checkpoint = json.loads((run.path / "checkpoint.json").read_text())
    checkpoint["declared"] = {"0": {"num_examples": 3}}  # as every checkpoint before the declarations had a file
    (run.path / "checkpoint.json").write_text(json.dumps(checkpoint))
    assert run.read_checkpoint()["declared"] == {"0": {"num_examples": 3}}


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("", "is not valid JSON"),
        ('{"round": 1, "global_di', "is not valid JSON"),
        ("[1, 2]", "holds list, not a checkpoint"),
        ('{"round": 1, "strategy": {}, "declared": {}}', "has no valid 'global_digest'"),
        ('{"round": "1", "global_digest": "x", "strategy": {}, "declared": {}}', "has no valid 'round'"),
        ('{"round": true, "global_digest": "x", "strategy": {}, "declared": {}}', "has no valid 'round'"),
    ],
)
def test_damaged_checkpoint_is_one_line_naming_file_and_fix(tmp_path, content, fragment):
    run = checkpointed_run(tmp_path)
    (run.path / "checkpoint.json").write_text(content)
    with pytest.raises(RunDirError) as info:
        run.read_checkpoint()
    assert_one_line(info, "checkpoint.json", fragment, "the run cannot be resumed; start a new run")


def test_non_utf8_checkpoint_is_a_run_dir_error(tmp_path):
    run = checkpointed_run(tmp_path)
    (run.path / "checkpoint.json").write_bytes(b'{"round": \xff}')
    with pytest.raises(RunDirError) as info:
        run.read_checkpoint()
    assert_one_line(info, "checkpoint.json", "cannot be read", "start a new run")


def test_truncated_round_adapter_is_a_run_dir_error(tmp_path):
    run = checkpointed_run(tmp_path)
    weights = run.round_dir(1) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(RunDirError) as info:
        run.read_checkpoint()
    assert_one_line(info, "round_1", "does not match the checkpoint digest")


def test_torn_last_metrics_line_is_dropped_on_resume_with_a_warning(tmp_path, caplog):
    run = checkpointed_run(tmp_path)
    with open(run.path / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "client", "round": 2, "cli')
    assert len(run.metrics()) == 4  # readers skip the line being written
    with caplog.at_level(logging.WARNING, logger="flb.run.directory"):
        run.read_checkpoint()
    assert "torn last line" in caplog.text
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [0, 0, 1, 1]


@pytest.mark.parametrize("bad_line", ['{"kind": "round", "ro', "[1, 2]", '{"kind": "round"}', "\x00\x00"])
def test_metrics_damaged_before_the_last_line_names_the_line(tmp_path, bad_line):
    run = checkpointed_run(tmp_path)
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    lines.insert(2, bad_line)
    (run.path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RunDirError) as info:
        run.read_checkpoint()
    assert_one_line(info, "metrics.jsonl", "line 3 is not a metrics record", "start a new run")


@pytest.mark.parametrize(
    "content, fragment", [("{", "is not valid JSON"), ('"text"', "holds str, not a config"), ("", "is not valid JSON")]
)
def test_damaged_config_json_is_a_run_dir_error(tmp_path, content, fragment):
    run = checkpointed_run(tmp_path)
    (run.path / "config.json").write_text(content)
    with pytest.raises(RunDirError) as info:
        RunDir.open(run.path).config()
    assert_one_line(info, "config.json", fragment)


def test_open_refuses_what_is_not_a_run_directory(tmp_path):
    with pytest.raises(RunDirError, match="is not a run directory"):
        RunDir.open(tmp_path)
    with pytest.raises(RunDirError, match="is not a usable path"):
        RunDir.open("runs/\x00bad")
