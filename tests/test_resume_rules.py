"""What --resume may change, who may resume, and what a run leaves behind in the process."""

from __future__ import annotations

import json
import logging
import os

import pytest

import assembly
import main_simple_fl
from flb.errors import RunDirError
from flb.run.lock import RunLock


@pytest.mark.parametrize(
    "override",
    [
        "seed=7",
        "num_clients=3",
        "model.lora.r=4",
        "dataset_name=other.jsonl",
        "client.local_dp=true",
        "chain.scoring=quality",
    ],
)
def test_resume_refuses_keys_that_would_change_what_was_done(one_round_run, override, capsys):
    config_before = (one_round_run / "config.json").read_text()
    assert main_simple_fl.main(["--resume", str(one_round_run), "--set", override]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(
        f"error: --resume --set {override.split('=')[0]}: would change what the run has already done"
    )
    assert "\n" not in error and "num_rounds" in error
    assert (one_round_run / "config.json").read_text() == config_before


def test_resume_asks_again_for_a_notify_url_kept_redacted(one_round_run, tmp_path, capsys):
    """config.json keeps notify.url with its credentials redacted: a resume must be given the URL, not post to
    https://***@..."""
    import shutil

    run = shutil.copytree(one_round_run, tmp_path / "run", symlinks=True)
    config = json.loads((run / "config.json").read_text())
    config["notify"]["url"] = "https://***@hooks.example.org/flb"
    (run / "config.json").write_text(json.dumps(config))
    assert main_simple_fl.main(["--resume", str(run), "--set", "num_rounds=2"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: notify.url: the run directory keeps it with its credentials redacted; pass --set notify.url=... again"
    )


def test_a_second_process_on_the_same_run_directory_is_refused(one_round_run, capsys):
    with RunLock(one_round_run):  # another run holds it (a lock is per open file, so this process counts as another)
        assert main_simple_fl.main(["--resume", str(one_round_run), "--set", "num_rounds=2"]) == 2
    error = capsys.readouterr().err
    assert f"another process (pid {os.getpid()}) is running this run directory" in error
    assert [
        json.loads(line)["round"]
        for line in (one_round_run / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "round"
    ] == [0, 1]


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path):
    (tmp_path / ".lock").write_text("999999999")  # left behind by a killed run: nobody holds it
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
        with pytest.raises(RunDirError, match="another process"):
            RunLock(tmp_path).__enter__()


def test_a_run_removes_its_log_handler_when_it_ends(one_round_run, tmp_path):
    import shutil

    run = shutil.copytree(one_round_run, tmp_path / "run", symlinks=True)
    size = (run / "run.log").stat().st_size
    before = list(logging.getLogger().handlers)
    args = assembly.parse_args(["--resume", str(run), "--set", "num_rounds=2"])
    assembly.run(assembly.resolve_config(args), resume=str(run))
    assert logging.getLogger().handlers == before
    assert (run / "run.log").stat().st_size > size


def test_resuming_a_finished_run_says_there_is_nothing_to_do(one_round_run, capsys):
    """The state asked for is there, so it is no error (exit 0), and nothing is loaded, run or rewritten."""
    files = {path: path.stat().st_mtime_ns for path in one_round_run.rglob("*") if path.is_file()}
    assert main_simple_fl.main(["--resume", str(one_round_run)]) == 0
    assert main_simple_fl.main(["--resume", str(one_round_run), "--set", "num_rounds=1"]) == 0
    out, err = capsys.readouterr()
    line = (
        f"nothing to do: {one_round_run} finished all its 1 rounds; extend it with --resume {one_round_run} --set "
        "num_rounds=N (N > 1)"
    )
    assert out.splitlines() == [line, line] and err == ""
    assert {path: path.stat().st_mtime_ns for path in one_round_run.rglob("*") if path.is_file()} == files
