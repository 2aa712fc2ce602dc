"""Experiment tracking (flb.run.tracking): what a run writes to TensorBoard's event files and to MLflow's store is read
back with their own readers; a resumed run goes on in the same MLflow run; a tracker that fails is one warning and the
run goes on."""

from __future__ import annotations

import json
import logging
import math
import shutil

import pytest

import assembly
from flb.config import TrackingSettings, load_config
from flb.errors import ConfigError
from flb.run.tracking import MLFLOW_RUN_FILE, Tracker, check_backends, each_round, round_scalars


def mlflow_client(run_path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{run_path.resolve() / 'tracking' / 'mlflow.db'}")


def mlflow_run(run_path):
    return mlflow_client(run_path).get_run(json.loads((run_path / "tracking" / MLFLOW_RUN_FILE).read_text())["run_id"])


def history(run_path, key: str) -> list[tuple[int, float]]:
    run = mlflow_run(run_path)
    return [(m.step, m.value) for m in mlflow_client(run_path).get_metric_history(run.info.run_id, key)]


def tensorboard(run_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_path / "tracking" / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def scalars(events, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in events.Scalars(tag)]


def texts(events, tag: str) -> list[tuple[int, str]]:
    from tensorboard.util.tensor_util import make_ndarray

    return [
        (event.step, make_ndarray(event.tensor_proto).item().decode())
        for event in events.Tensors(f"{tag}/text_summary")
    ]


def rows(run_path, kind: str) -> list[dict]:
    return [m for m in map(json.loads, (run_path / "metrics.jsonl").read_text().splitlines()) if m["kind"] == kind]


def resume(run_path, *overrides: str):
    args = assembly.parse_args(["--resume", str(run_path)] + [a for o in overrides for a in ("--set", o)])
    return assembly.run(assembly.resolve_config(args), resume=str(run_path))


def tracking_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "flb.run.tracking" and r.levelno >= logging.WARNING]


def test_a_rounds_numbers_are_named_scalars_and_what_it_lacks_is_left_out():
    row = {
        "round": 3,
        "num_clients": 2,
        "eval_loss": 1.5,
        "perplexity": 4.48,
        "accuracy": 0.25,
        "accuracy_by_task": {"arithmetic": 0.5},
        "learning_rate": 0.001,
        "round_time_s": 2.0,
        "eval_time_s": 1.0,
        "comm_down_bytes": 1_000_000,
        "comm_up_bytes": 500_000,
        "comm_total_down_bytes": 3_000_000,
        "comm_total_up_bytes": 1_500_000,
        "privacy": {"epsilon": None},
        "suites": {"multiple_choice": {"accuracy": 0.75}, "lm_eval": {"arc_easy": {"acc,none": 0.4}}},
    }
    clients = [
        {"client_id": 0, "train_loss": 2.0},
        {"client_id": 1, "train_loss": None},
        {"client_id": 2, "train_loss": math.nan},
    ]
    assert round_scalars(row, clients) == {
        "eval/loss": 1.5,
        "eval/perplexity": 4.48,
        "eval/accuracy": 0.25,
        "eval/accuracy/arithmetic": 0.5,
        "train/learning_rate": 0.001,
        "round/num_clients": 2.0,
        "round/time_s": 2.0,
        "round/eval_time_s": 1.0,
        "comm/round_mb": 1.5,
        "comm/total_mb": 4.5,
        "suites/multiple_choice/accuracy": 0.75,
        "suites/lm_eval/arc_easy/acc_none": 0.4,
        "train/loss/client_0": 2.0,
    }
    assert round_scalars({"round": 0, "num_clients": 0, "eval_loss": 2.0, "privacy": {"epsilon": 3.5}}, []) == {
        "eval/loss": 2.0,
        "round/num_clients": 0.0,
        "privacy/epsilon": 3.5,
    }


def test_a_run_is_in_tensorboard_and_mlflow_read_back_with_their_own_readers(one_round_run):
    round_rows, client_rows = rows(one_round_run, "round"), rows(one_round_run, "client")
    events = tensorboard(one_round_run)
    assert scalars(events, "eval/loss") == [(r["round"], pytest.approx(r["eval_loss"])) for r in round_rows]
    assert scalars(events, "train/loss/client_1") == [
        (1, pytest.approx(next(c["train_loss"] for c in client_rows if c["client_id"] == 1)))
    ]
    assert scalars(events, "comm/round_mb")[0][1] == pytest.approx(
        (round_rows[1]["comm_down_bytes"] + round_rows[1]["comm_up_bytes"]) / 1e6
    )
    [(_, config_text)] = texts(events, "config")
    assert json.loads(config_text.strip("`\n")) == json.loads((one_round_run / "config.json").read_text())
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")

    run = mlflow_run(one_round_run)
    assert run.info.status == "FINISHED" and run.info.run_name == one_round_run.name
    assert run.data.params["num_rounds"] == "1" and run.data.params["model.lora.r"] == "8"
    assert run.data.params["tracking.backends"] == '["tensorboard", "mlflow"]'
    assert history(one_round_run, "eval/loss") == [(r["round"], pytest.approx(r["eval_loss"])) for r in round_rows]
    assert history(one_round_run, "train/learning_rate") == [(1, pytest.approx(round_rows[1]["learning_rate"]))]
    artifacts = mlflow_client(one_round_run).list_artifacts(run.info.run_id, "final_adapter")
    assert sorted(a.path for a in artifacts) == [
        "final_adapter/adapter_config.json",
        "final_adapter/adapter_model.safetensors",
    ]
    stored = one_round_run / "tracking" / "mlartifacts"
    [weights] = stored.rglob("final_adapter/adapter_model.safetensors")  # the run's own store, inside its directory
    assert weights.read_bytes() == (one_round_run / "final_adapter" / "adapter_model.safetensors").read_bytes()


def test_a_resumed_run_goes_on_in_the_same_mlflow_run_and_tensorboard_steps(one_round_run, tmp_path):
    run_path = shutil.copytree(one_round_run, tmp_path / "run", symlinks=True)
    before = mlflow_run(run_path)
    resume(run_path, "num_rounds=2")
    after = mlflow_run(run_path)
    assert after.info.run_id == before.info.run_id and after.info.status == "FINISHED"
    assert len(mlflow_client(run_path).search_runs([after.info.experiment_id])) == 1
    assert [step for step, _ in history(run_path, "eval/loss")] == [0, 1, 2]
    assert after.data.params["num_rounds"] == "1" and after.data.tags["config.num_rounds"] == "2"
    assert [step for step, _ in scalars(tensorboard(run_path), "eval/loss")] == [0, 1, 2]
    # the copy's artifacts are in the copy, not in the run it was copied from
    [weights] = (run_path / "tracking" / "mlartifacts").rglob("final_adapter/adapter_model.safetensors")
    assert weights.read_bytes() == (run_path / "final_adapter" / "adapter_model.safetensors").read_bytes()
    [original] = (one_round_run / "tracking" / "mlartifacts").rglob("final_adapter/adapter_model.safetensors")
    assert original.read_bytes() == (one_round_run / "final_adapter" / "adapter_model.safetensors").read_bytes()


def test_a_failing_tracker_is_one_warning_and_the_run_goes_on(one_round_run, tmp_path, caplog):
    """MLflow cannot use the URI: one warning naming it, no more from later rounds; TensorBoard keeps logging."""
    run_path = shutil.copytree(one_round_run, tmp_path / "run", symlinks=True)
    resume(run_path, "num_rounds=2", "tracking.uri=garbage://user:hunter2@nowhere")
    [warning] = tracking_warnings(caplog)
    assert warning.startswith("tracking.backends mlflow at garbage://***@nowhere: ")
    assert warning.endswith("; mlflow stops here, the run goes on") and "hunter2" not in caplog.text
    assert [r["round"] for r in rows(run_path, "round")] == [0, 1, 2]
    assert [step for step, _ in scalars(tensorboard(run_path), "eval/loss")] == [0, 1, 2]


@pytest.mark.chain
def test_each_rounds_ledger_transaction_is_a_tag_once_known(tmp_path, caplog):
    """A real embedded chain records rounds 0 and 1; the tracker tags a round when the outbox knows its hash, the
    rest at the end, after the ledger has sent them."""
    from chain.accounts import dev_accounts
    from chain.ledger import open_ledger
    from flb.config import ChainSettings
    from flb.run.directory import RunDir
    from tests.chain.conftest import ANCHORS, register, signed_record

    clients = list(dev_accounts(3).clients)
    config = load_config(None, ["tracking.backends=[tensorboard,mlflow]"])
    tracker = Tracker(config.tracking, tmp_path, config.to_dict())
    ledger = open_ledger(ChainSettings(), tmp_path, ANCHORS)
    tracker.follow(ledger)
    register(ledger, clients[:2])
    for round in (0, 1):
        record = signed_record(ledger.signing_domain, clients, round, client_ids=() if round == 0 else (0, 1))
        ledger.record_round(record)
        if round == 0:
            assert ledger.wait_until_sent(30)  # known when round 0 ends; round 1's may still be queued then
        row = {"kind": "round", "round": round, "num_clients": 0, "eval_loss": 2.0 - round}
        RunDir(tmp_path).append_metrics(row)
        tracker.on_round(row)
    assert ledger.close() is None
    tracker.close(final_adapter=None)
    transactions = {t["record"]: t["tx"] for t in ledger.summary()["transactions"]}
    tags = mlflow_run(tmp_path).data.tags
    assert {k: v for k, v in tags.items() if k.startswith("ledger.")} == {
        "ledger.round_0.tx": transactions["round:0"],
        "ledger.round_1.tx": transactions["round:1"],
    }
    assert sorted(texts(tensorboard(tmp_path), "ledger/tx")) == [
        (0, transactions["round:0"]),
        (1, transactions["round:1"]),
    ]
    assert mlflow_run(tmp_path).info.status == "FAILED"  # closed without a final adapter
    assert tracking_warnings(caplog) == []


def test_a_backend_that_is_not_installed_is_one_line_naming_the_package(monkeypatch):
    import flb.run.tracking

    check_backends(TrackingSettings(backends=["tensorboard", "mlflow"]))
    monkeypatch.setitem(flb.run.tracking.PACKAGES, "mlflow", ("flb_no_such_module", "mlflow-skinny==3.18.0"))
    with pytest.raises(ConfigError) as info:
        check_backends(TrackingSettings(backends=["mlflow"]))
    assert str(info.value) == (
        "tracking.backends: mlflow needs the mlflow-skinny package; pip install "
        "mlflow-skinny==3.18.0 (or drop mlflow from tracking.backends)"
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["tracking.backends=[wandb]"], "tracking.backends: invalid value 'wandb'; allowed: tensorboard | mlflow"),
        (
            ["tracking.uri=http://localhost:5000"],
            "tracking.uri: invalid value 'http://localhost:5000'; allowed: null unless tracking.backends has mlflow",
        ),
        (
            ["tracking.backends=[mlflow]", "tracking.uri=localhost:5000"],
            "tracking.uri: invalid value 'localhost:5000'; allowed: an MLflow tracking URI with its scheme",
        ),
    ],
)
def test_bad_tracking_settings_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert str(info.value).startswith(message)


def test_no_tracker_and_no_notifier_is_no_callback():
    seen = []
    assert each_round(None, None) is None
    each_round(None, seen.append, lambda row: seen.append(row["round"]))({"round": 4})
    assert seen == [{"round": 4}, 4]
