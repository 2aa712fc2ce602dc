"""execution.mode: processes (client.workers): whole runs on the tiny model against sequential ones, and the pool's
scheduling, out-of-memory retries and worker deaths with stand-in clients that need no model."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from client.workers import WorkerError, WorkerPool
from flb.audit.digests import adapter_digest
from flb.errors import ClientLate, ModelError, RunFailed
from flb.scheduler import WorkerDied
from flb.types import ClientUpdate, RoundDeadline
from tests.flower_loopback import FLOWER_RUN
from tests.tiny_model import tiny_run_overrides


def final_digest(run_path: Path) -> str:
    return json.loads((run_path / "summary.json").read_text())["final_digest"]


def test_two_workers_give_the_sequential_digest_and_resume_to_it(
    flower_reference_run, tiny_model_dir, tmp_path, run_and_resume_after_round_1, caplog
):
    """Against the session's in-process (sequential) reference run, with the ledger on here: the workers sign the
    data uploads and updates, which changes no tensor."""
    overrides = (
        tiny_run_overrides(tiny_model_dir, tmp_path / "runs")
        + FLOWER_RUN
        + ["chain_record=true", "execution.mode=processes", "execution.workers=2"]
    )
    with caplog.at_level(logging.INFO):
        uninterrupted, resumed = run_and_resume_after_round_1(overrides)
    assert final_digest(uninterrupted) == final_digest(flower_reference_run)
    assert final_digest(resumed) == final_digest(flower_reference_run)
    log = (uninterrupted / "run.log").read_text()
    assert "execution: 2 worker processes on cpu" in log and "execution: one client peaks at" in log
    assert '"upload:0-1"' in (uninterrupted / "chain" / "outbox.jsonl").read_text()  # both clients' uploads


# The pool with stand-in clients: each fit takes FIT_S, and files in a shared folder steer and record what it does.
FIT_S = 0.25


def no_model(device: str):
    return None, None


def missing_model(device: str):
    raise ModelError("model.model_path: no model in /nowhere; point it at a model directory")


def stand_in_clients(folder: str, device: str, shards: dict[int, list[dict]], model, tokenizer):
    return {client_id: StandIn(client_id, len(shard), Path(folder)) for client_id, shard in shards.items()}


@dataclass
class StandIn:
    client_id: int
    num_examples: int
    folder: Path
    address = None

    def bind_ledger(self, domain) -> None:
        pass

    def privacy_spent(self) -> dict:
        return {}

    def received(self, broadcast):
        return broadcast

    def fit(self, global_adapter, round: int, extras=None) -> ClientUpdate:
        if (self.folder / f"kill-{self.client_id}").exists():
            os.kill(os.getpid(), signal.SIGKILL)
        if (self.folder / f"fail-{self.client_id}").exists():
            raise ValueError(f"client {self.client_id} cannot read its shard\nsecond line")
        running = self.folder / f"running-{self.client_id}"
        running.touch()
        started = time.monotonic()
        time.sleep(FIT_S * (400 if (self.folder / f"slow-{self.client_id}").exists() else 1))
        crowd = [p for p in self.folder.glob("running-*") if p != running]
        running.unlink()
        if crowd and (self.folder / "crowds-run-out-of-memory").exists():
            raise MemoryError("the crowd ran out of memory")
        (self.folder / f"ran-{self.client_id}-{os.getpid()}").write_text(json.dumps([started, time.monotonic()]))
        tensors = {name: tensor + self.client_id for name, tensor in global_adapter.items()}
        return ClientUpdate(
            client_id=self.client_id,
            round=round,
            tensors=tensors,
            num_examples=self.num_examples,
            train_loss=0.5,
            wall_time_s=FIT_S,
            num_bytes=0,
            digest=adapter_digest(tensors),
        )


@pytest.fixture
def pool_of_stand_ins(tmp_path):
    """(folder, start(**kwargs) -> a started pool of 2 workers on cpu over 3 stand-in clients); pools stop after."""
    pools = []

    def start(**kwargs):
        pool = WorkerPool(
            load_model=no_model,
            build_clients=functools.partial(stand_in_clients, str(tmp_path)),
            shards=[[{}], [{}, {}], [{}]],
            devices=["cpu"],
            workers_per_device=2,
            **kwargs,
        )
        pools.append(pool)
        return pool.start()

    yield tmp_path, start
    for pool in pools:
        pool.close()


def adapter():
    import torch

    return {"a": torch.zeros(2, 2)}


def fit_intervals(folder: Path) -> list[tuple[float, float]]:
    return sorted(tuple(json.loads(p.read_text())) for p in folder.glob("ran-*"))


def overlap(intervals) -> bool:
    return any(later[0] < earlier[1] for earlier, later in zip(intervals, intervals[1:]))


def test_the_first_job_runs_alone_then_as_many_as_the_budget_holds(pool_of_stand_ins):
    folder, start = pool_of_stand_ins
    pool = start()
    results = pool.fit_all(pool.clients, adapter(), 1, {})
    assert [r.client_id for r in results] == [0, 1, 2]
    assert [float(r.tensors["a"][0, 0]) for r in results] == [0.0, 1.0, 2.0]
    first, second, third = fit_intervals(folder)
    assert first[1] <= min(second[0], third[0]) and overlap([second, third])
    assert pool.admissions["cpu"].concurrency == 2


def test_never_runs_more_than_the_memory_budget_allows(pool_of_stand_ins):
    folder, start = pool_of_stand_ins
    pool = start(memory_budget_mb=1e-6)  # one byte: never two at once
    for round in (1, 2):
        assert all(isinstance(r, ClientUpdate) for r in pool.fit_all(pool.clients, adapter(), round, {}))
    assert pool.admissions["cpu"].concurrency == 1
    assert not overlap(fit_intervals(folder))


def test_an_out_of_memory_error_among_others_is_retried_with_less_concurrency(pool_of_stand_ins, caplog):
    folder, start = pool_of_stand_ins
    pool = start()
    (folder / "crowds-run-out-of-memory").touch()
    with caplog.at_level(logging.WARNING):
        results = pool.fit_all(pool.clients, adapter(), 1, {})
    assert all(isinstance(r, ClientUpdate) for r in results)
    assert "retrying with 1 at once" in caplog.text
    assert re.search(r"worker \d: fit for client \d ran out of memory: the crowd", caplog.text)  # from the worker
    assert pool.admissions["cpu"].concurrency == 1


def test_a_client_that_raises_is_its_failure_in_one_line(pool_of_stand_ins, caplog):
    folder, start = pool_of_stand_ins
    pool = start()
    (folder / "fail-2").touch()
    results = pool.fit_all(pool.clients, adapter(), 1, {})
    assert isinstance(results[0], ClientUpdate) and isinstance(results[1], ClientUpdate)
    assert isinstance(results[2], WorkerError)
    assert str(results[2]).startswith("ValueError: client 2 cannot read its shard (client 2 on worker ")
    assert "round 1: client 2 failed (fit)" in caplog.text and "Traceback" in caplog.text  # from the worker


def test_a_worker_that_cannot_load_the_model_stops_the_start(tmp_path):
    pool = WorkerPool(
        load_model=missing_model,
        build_clients=functools.partial(stand_in_clients, str(tmp_path)),
        shards=[[{}]],
        devices=["cpu"],
        workers_per_device=2,
    )
    with pytest.raises(RunFailed, match=r"execution: worker \d on cpu could not start: ModelError: model.model_path"):
        pool.start()
    assert pool.workers == []


def test_a_worker_killed_mid_round_is_that_clients_failure_and_is_replaced(pool_of_stand_ins):
    folder, start = pool_of_stand_ins
    pool = start()
    (folder / "kill-1").touch()
    started = time.monotonic()
    results = pool.fit_all(pool.clients, adapter(), 1, {})
    assert time.monotonic() - started < 60
    assert isinstance(results[0], ClientUpdate) and isinstance(results[2], ClientUpdate)
    assert isinstance(results[1], WorkerDied)
    assert "died while it ran fit for client 1: killed by SIGKILL" in str(results[1])
    assert "\n" not in str(results[1])
    (folder / "kill-1").unlink()
    assert all(isinstance(r, ClientUpdate) for r in pool.fit_all(pool.clients, adapter(), 2, {}))


def test_a_round_deadline_stops_a_straggler_and_its_worker_starts_again(pool_of_stand_ins):
    """Client 1 would take 100 s: at the deadline the two others are in, so client 1 is late, its worker is stopped
    (its round never finishes, so its private state stays as before it) and started again for the next round."""
    folder, start = pool_of_stand_ins
    pool = start()
    (folder / "slow-1").touch()
    started = time.monotonic()
    results = pool.fit_all(pool.clients, adapter(), 1, {}, RoundDeadline(time.monotonic() + 2.0, needed=2))
    assert 2.0 <= time.monotonic() - started < 30
    assert isinstance(results[0], ClientUpdate) and isinstance(results[2], ClientUpdate)
    assert isinstance(results[1], ClientLate)
    assert str(results[1]) == "client 1: still training when the round closed at its deadline"
    (folder / "slow-1").unlink()
    assert all(isinstance(r, ClientUpdate) for r in pool.fit_all(pool.clients, adapter(), 2, {}))


def test_a_round_waits_past_its_deadline_for_the_updates_it_needs(pool_of_stand_ins):
    folder, start = pool_of_stand_ins
    pool = start()
    results = pool.fit_all(pool.clients, adapter(), 1, {}, RoundDeadline(time.monotonic(), needed=3))
    assert all(isinstance(r, ClientUpdate) for r in results)


class LeavesAFile:
    """A pickle that, if unpickled, creates a file: what a worker would send to run code in the main process."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_the_main_process_unpickles_nothing_a_worker_sends(tmp_path):
    """The channel reads frames (safetensors and JSON): a pickle sent instead is refused, never executed."""
    import multiprocessing
    import pickle

    from client.workers.channel import Channel
    from flb.frames import FrameError

    target = tmp_path / "executed"
    worker_end, main_end = multiprocessing.Pipe()
    worker_end.send_bytes(pickle.dumps(LeavesAFile(str(target))))
    worker_end.send(LeavesAFile(str(target)))  # multiprocessing's own pickling, as Connection.send would do it
    with pytest.raises(FrameError, match="unreadable frame"):
        Channel(main_end).receive()
    with pytest.raises(FrameError, match="unreadable frame"):
        Channel(main_end).receive()
    assert not target.exists()
