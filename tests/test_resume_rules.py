"""What --resume may change, who may resume, and what a run leaves behind in the process."""
from __future__ import annotations

import json
import logging
import os

import pytest

import main_simple_fl
from flb.config import load_config
from flb.errors import RunDirError
from flb.runlock import RunLock


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    overrides = [f"model.model_path={tiny_model_dir}", f"output_dir={tmp_path_factory.mktemp('runs')}",
                 "num_clients=2", "clients_per_round=2", "num_rounds=1", "local_steps=1", "eval.size=8",
                 "eval.max_new_tokens=2", "sft.max_length=96", "chain_record=false"]
    return main_simple_fl.run(load_config(None, overrides))


@pytest.mark.parametrize("override", ["seed=7", "num_clients=3", "model.lora.r=4", "dataset_name=other.jsonl",
                                      "client.local_dp=true", "chain.scoring=quality"])
def test_resume_refuses_keys_that_would_change_what_was_done(finished_run, override, capsys):
    config_before = (finished_run / "config.json").read_text()
    assert main_simple_fl.main(["--resume", str(finished_run), "--set", override]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: --resume --set {override.split('=')[0]}: would change what the run has already done")
    assert "\n" not in error and "num_rounds" in error
    assert (finished_run / "config.json").read_text() == config_before


def test_resume_asks_again_for_a_notify_url_kept_redacted(finished_run, tmp_path, capsys):
    """config.json keeps notify.url with its credentials redacted: a resume must be given the URL, not post to
    https://***@..."""
    import shutil

    run = shutil.copytree(finished_run, tmp_path / "run", symlinks=True)
    config = json.loads((run / "config.json").read_text())
    config["notify"]["url"] = "https://***@hooks.example.org/flb"
    (run / "config.json").write_text(json.dumps(config))
    assert main_simple_fl.main(["--resume", str(run), "--set", "num_rounds=2"]) == 2
    assert capsys.readouterr().err.strip() == ("error: notify.url: the run directory keeps it with its credentials "
                                               "redacted; pass --set notify.url=... again")


def test_a_second_process_on_the_same_run_directory_is_refused(finished_run, capsys):
    with RunLock(finished_run):  # another run holds it (a lock is per open file, so this process counts as another)
        assert main_simple_fl.main(["--resume", str(finished_run), "--set", "num_rounds=2"]) == 2
    error = capsys.readouterr().err
    assert f"another process (pid {os.getpid()}) is running this run directory" in error
    assert [json.loads(l)["round"] for l in (finished_run / "metrics.jsonl").read_text().splitlines()
            if json.loads(l)["kind"] == "round"] == [0, 1]


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path):
    (tmp_path / ".lock").write_text("999999999")  # left behind by a killed run: nobody holds it
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
        with pytest.raises(RunDirError, match="another process"):
            RunLock(tmp_path).__enter__()


def test_a_run_removes_its_log_handler_when_it_ends(finished_run):
    before = list(logging.getLogger().handlers)
    main_simple_fl.run(main_simple_fl.resolve_config(main_simple_fl.parse_args(["--resume", str(finished_run)])),
                       resume=str(finished_run))
    assert logging.getLogger().handlers == before
    assert (finished_run / "run.log").stat().st_size > 0
