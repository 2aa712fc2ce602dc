"""How many units of work may run at once on one device, within a memory budget: client jobs on worker processes
(execution.mode: processes) or clients in one batch (execution.mode: batched).

The first unit runs alone and its peak memory is measured (`peak_memory`); from then on as many run at once as fit
in the budget (execution.memory_budget_mb; by default 90 % of what the device has free), never more than `limit`.
An out-of-memory error halves that number and the work is retried with less concurrency. Every decision is logged.

Measuring: on CUDA, the caching allocator's own peak statistics (reset on entry). On CPU, the process's peak resident
set size above its size on entry. On Linux the kernel keeps that peak exactly (VmHWM in /proc/self/status) and resets
it to the current size when 5 is written to /proc/self/clear_refs, so even a brief spike is seen and no thread is
needed; where /proc does not allow that, a daemon thread samples the size with psutil every 20 ms (a spike shorter
than that can be missed). resource.getrusage's ru_maxrss cannot serve: it is the lifetime peak and never resets.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

from flb.errors import FLBError

log = logging.getLogger(__name__)

MB = 10**6  # execution.memory_budget_mb counts in 10^6 bytes
FREE_SHARE = 0.9  # of the device's free memory, the default budget
SAMPLE_S = 0.02
_CLEAR_REFS, _STATUS = Path("/proc/self/clear_refs"), Path("/proc/self/status")


class WorkerDied(FLBError):
    """A worker process ended while it had work; `exitcode` is multiprocessing's (-N: killed by signal N)."""

    def __init__(self, message: str, exitcode: int | None):
        super().__init__(message)
        self.exitcode = exitcode


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` says the work ran out of memory: torch's OutOfMemoryError (a RuntimeError), MemoryError, a
    RuntimeError whose message says so, or a worker process killed by SIGKILL (what Linux's OOM killer sends)."""
    if isinstance(exc, WorkerDied):
        return exc.exitcode == -signal.SIGKILL
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def memory_device(device: str) -> str:
    """The device whose memory `device` (a model.device_map or execution.devices entry) uses: auto is the first GPU
    when there is one; mps shares the host's memory, counted as cpu."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu" if device == "mps" else device


def device_free_bytes(device: str) -> int:
    """Memory free on `device` now: the host's available memory for cpu, the driver's free memory for cuda[:N]."""
    device = memory_device(device)
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(_cuda_index(device))[0]
    import psutil

    return psutil.virtual_memory().available


def default_budget_bytes(device: str) -> int:
    return int(FREE_SHARE * device_free_bytes(device))


def budget_bytes(device: str, memory_budget_mb: float | None) -> int:
    """execution.memory_budget_mb in bytes, or the default budget of `device` when it is null."""
    return default_budget_bytes(device) if memory_budget_mb is None else int(memory_budget_mb * MB)


@dataclass
class Admission:
    """How many units run at once on `device`: 1 until the first unit's peak is `measured`, then as many as the budget
    holds (at least 1, at most `limit` and the cap that out-of-memory errors lower)."""

    budget_bytes: int
    limit: int  # the most units at once: the workers on the device, or the clients in a batch
    device: str
    per_unit_bytes: int | None = None  # the largest peak measured so far
    cap: int = field(init=False)

    def __post_init__(self):
        if self.limit < 1:
            raise ValueError(f"Admission limit: {self.limit} is not an integer >= 1")
        if self.budget_bytes <= 0:
            raise ValueError(f"Admission budget_bytes: {self.budget_bytes} is not > 0; give a positive budget")
        self.cap = self.limit

    @property
    def concurrency(self) -> int:
        if self.per_unit_bytes is None:
            return 1
        return min(self.limit, self.cap, max(1, self.budget_bytes // max(1, self.per_unit_bytes)))

    def measured(self, peak_bytes: int) -> int:
        """Take a unit's measured peak (the largest seen counts); logs the decision the first time and whenever it
        changes. Returns the concurrency."""
        first, before = self.per_unit_bytes is None, self.concurrency
        self.per_unit_bytes = max(int(peak_bytes), self.per_unit_bytes or 0)
        if first or self.concurrency != before:
            log.info(
                "execution: one client peaks at %.0f MB on %s; budget %.0f MB -> %d at once",
                self.per_unit_bytes / MB,
                self.device,
                self.budget_bytes / MB,
                self.concurrency,
            )
        return self.concurrency

    def out_of_memory(self) -> int:
        """Halve the concurrency (never below 1) after an out-of-memory error; returns the new one."""
        before = self.concurrency
        self.cap = max(1, before // 2)
        log.warning(
            "execution: out of memory on %s with %d at once; retrying with %d at once",
            self.device,
            before,
            self.concurrency,
        )
        return self.concurrency


@dataclass
class Peak:
    """What `peak_memory` measured: the work's peak bytes above those in use on entry (set when the block exits)."""

    bytes: int | None = None


@contextlib.contextmanager
def peak_memory(device: str):
    """Measure the peak memory the work inside the block adds on `device` (see the module's docstring for how);
    yields a Peak whose `bytes` is set on a normal exit."""
    device = memory_device(device)
    peak = Peak()
    if device.startswith("cuda"):
        with _cuda_peak(_cuda_index(device), peak):
            yield peak
    elif _peak_rss_resets():
        start = _rss()
        _CLEAR_REFS.write_text("5")
        yield peak
        peak.bytes = max(0, _high_water_mark() - start)
    else:
        with _sampled_peak(peak):
            yield peak


@contextlib.contextmanager
def _cuda_peak(index: int | None, peak: Peak):
    """The larger of the allocated and the reserved peak above their values on entry: the caching allocator keeps
    what it reserved, and that is what other processes on the device cannot use."""
    import torch

    torch.cuda.synchronize(index)
    torch.cuda.reset_peak_memory_stats(index)
    allocated, reserved = torch.cuda.memory_allocated(index), torch.cuda.memory_reserved(index)
    yield
    torch.cuda.synchronize(index)
    peak.bytes = max(
        0, torch.cuda.max_memory_allocated(index) - allocated, torch.cuda.max_memory_reserved(index) - reserved
    )


@contextlib.contextmanager
def _sampled_peak(peak: Peak):
    start = _rss()
    highest = [start]
    done = threading.Event()

    def sample():
        while not done.wait(SAMPLE_S):
            highest[0] = max(highest[0], _rss())

    sampler = threading.Thread(target=sample, name="peak-rss", daemon=True)
    sampler.start()
    try:
        yield
    finally:
        done.set()
        sampler.join()
    peak.bytes = max(0, max(highest[0], _rss()) - start)


def _cuda_index(device: str) -> int | None:
    """The N of cuda:N; None (the current device) for plain cuda."""
    _, _, index = device.partition(":")
    return int(index) if index else None


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


@functools.cache
def _peak_rss_resets() -> bool:
    """Whether this process may reset the kernel's record of its peak RSS (Linux, /proc writable)."""
    try:
        _CLEAR_REFS.write_text("5")
        _high_water_mark()
    except (OSError, ValueError):
        return False
    return True


def _high_water_mark() -> int:
    """The process's peak RSS in bytes since the last reset (ValueError when /proc/self/status has no VmHWM)."""
    found = re.search(r"^VmHWM:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if found is None:
        raise ValueError("no VmHWM in /proc/self/status")
    return int(found.group(1)) * 1024


def cpu_threads(total_workers: int) -> int:
    """Torch threads for each of `total_workers` processes sharing this machine's usable cores."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, usable // total_workers)
