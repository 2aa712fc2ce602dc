"""flb.scheduler: admission within a memory budget, out-of-memory handling, peak memory measurement."""

from __future__ import annotations

import logging
import signal
import time

import pytest

from flb import scheduler
from flb.scheduler import MB, Admission, WorkerDied, budget_bytes, is_out_of_memory, peak_memory


def test_the_first_unit_runs_alone_until_its_peak_is_measured():
    admission = Admission(budget_bytes=1000 * MB, limit=8, device="cpu")
    assert admission.concurrency == 1
    assert admission.measured(300 * MB) == 3


@pytest.mark.parametrize(
    "budget, peak, limit", [(1000, 300, 8), (1000, 999, 4), (1000, 1, 4), (50, 300, 4), (4096, 1024, 2)]
)
def test_never_admits_more_than_the_budget_or_the_limit_allows(budget, peak, limit):
    admission = Admission(budget_bytes=budget, limit=limit, device="cpu")
    admission.measured(peak)
    assert 1 <= admission.concurrency <= limit
    assert admission.concurrency == 1 or admission.concurrency * peak <= budget


def test_the_largest_peak_measured_decides_and_each_decision_is_logged_once(caplog):
    admission = Admission(budget_bytes=1000 * MB, limit=8, device="cpu")
    with caplog.at_level(logging.INFO, logger="flb.scheduler"):
        admission.measured(200 * MB)
        admission.measured(100 * MB)
        admission.measured(400 * MB)
    assert admission.concurrency == 2
    assert [r.getMessage() for r in caplog.records] == [
        "execution: one client peaks at 200 MB on cpu; budget 1000 MB -> 5 at once",
        "execution: one client peaks at 400 MB on cpu; budget 1000 MB -> 2 at once",
    ]


def test_an_out_of_memory_error_halves_the_concurrency_down_to_one(caplog):
    admission = Admission(budget_bytes=10**12, limit=6, device="cuda:1")
    admission.measured(MB)
    with caplog.at_level(logging.WARNING, logger="flb.scheduler"):
        assert [admission.out_of_memory() for _ in range(4)] == [3, 1, 1, 1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0] == "execution: out of memory on cuda:1 with 6 at once; retrying with 3 at once"
    admission.measured(MB)  # a later measurement does not lift the cap
    assert admission.concurrency == 1


def test_an_injected_out_of_memory_error_is_retried_with_less_concurrency():
    """The protocol both execution modes follow: run a wave of `concurrency` units; on an out-of-memory error lower
    it and run the units that did not finish again."""
    admission = Admission(budget_bytes=800, limit=8, device="cpu")
    admission.measured(100)
    waves, pending = [], list(range(10))

    def work(wave):  # too much memory whenever more than 2 run together
        if len(wave) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")

    while pending:
        wave = pending[: admission.concurrency]
        try:
            work(wave)
        except RuntimeError as exc:
            assert is_out_of_memory(exc)
            admission.out_of_memory()
            continue
        waves.append(wave)
        pending = pending[len(wave) :]
    assert [len(w) for w in waves] == [2, 2, 2, 2, 2]


def test_out_of_memory_errors_are_told_from_others():
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(WorkerDied("worker 0 died", exitcode=-signal.SIGKILL))
    assert not is_out_of_memory(WorkerDied("worker 0 died", exitcode=-signal.SIGSEGV))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only errors of the kinds that report it


def test_the_budget_is_the_configured_one_or_most_of_what_is_free():
    import psutil

    assert budget_bytes("cpu", 250.5) == 250_500_000
    free = psutil.virtual_memory().available
    assert 0.8 * free < budget_bytes("cpu", None) < free


@pytest.mark.parametrize("kernel_peak", [True, False], ids=["proc-high-water-mark", "sampled-rss"])
def test_peak_memory_on_cpu_sees_an_allocation_freed_before_the_block_ends(kernel_peak, monkeypatch):
    import torch

    if not kernel_peak:
        monkeypatch.setattr(scheduler, "_peak_rss_resets", lambda: False)
    elif not scheduler._peak_rss_resets():
        pytest.skip("this system does not let a process reset its peak RSS")
    with peak_memory("cpu") as peak:
        tensor = torch.ones(50_000_000, dtype=torch.float32)  # 200 MB, every page written
        time.sleep(0.1)  # several sampling periods
        del tensor
    assert 190 * MB <= peak.bytes <= 260 * MB
