"""A clean stop. While `stop_signals()` is in force, the first Ctrl-C (SIGINT) or SIGTERM raises StopRequested in the
main thread where the run is, so nothing new is finished; inside `durable()` (a round being made durable) it waits
for the section to end. A second signal ends the process at once: everything saved before it stays saved.

A signal that lands while the main thread is inside logging is raised a moment later (SIGALRM, every RETRY_S) once it
is out: raised between a handler's acquire() and its try, it would leave that handler's lock held, and the ledger's
sender thread, blocked on its next log line, would confirm nothing more.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys

EXIT_CODE = 130  # as a shell reports a process stopped by Ctrl-C
SIGNALS = (signal.SIGINT, signal.SIGTERM)
RETRY_S = 0.01
_UNSAFE_FILES = (os.path.dirname(logging.__file__) + os.sep,)  # code an exception must not cut (its locks)


class StopRequested(KeyboardInterrupt):
    """The run was asked to stop by `signal_name`; raised once, in the main thread. `run_dir`: the run directory it
    stopped in, once one exists (assembly.run sets it)."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.run_dir = None


class _Stop:
    requested: str | None = None  # the first signal's name, once one came
    durable_depth = 0
    pending = False  # a signal came inside durable(): raised when the section ends


_stop = _Stop()


def _on_signal(signum, frame) -> None:
    name = signal.Signals(signum).name
    if _stop.requested is not None:
        sys.stderr.write(f"\n{name} again: stopped at once (exit {EXIT_CODE}); what was saved before it is kept\n")
        sys.stderr.flush()
        os._exit(EXIT_CODE)
    _stop.requested = name
    sys.stderr.write(
        f"\n{name}: stopping without finishing the round in progress (press Ctrl-C again to stop at once)\n"
    )
    sys.stderr.flush()
    _raise_when_safe(signal.SIGALRM, frame)


def _raise_when_safe(signum, frame) -> None:
    """Raise StopRequested now, or once the durable section ends, or (inside logging) at the next SIGALRM."""
    if _stop.requested is None:  # an alarm that is not ours
        return
    if _stop.durable_depth:
        _stop.pending = True
    elif _inside(frame, _UNSAFE_FILES):
        signal.setitimer(signal.ITIMER_REAL, RETRY_S)
    else:
        raise StopRequested(_stop.requested)


def _inside(frame, folders: tuple[str, ...]) -> bool:
    """Whether `frame` or one of its callers runs code from `folders`."""
    while frame is not None:
        if frame.f_code.co_filename.startswith(folders):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def stop_signals():
    """SIGINT and SIGTERM stop the process cleanly (as above) for the block; the previous handlers come back after."""
    previous = {signum: signal.signal(signum, _on_signal) for signum in SIGNALS}
    previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, _raise_when_safe)
    _stop.requested, _stop.pending = None, False
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def durable():
    """A section a stop signal does not cut: writing a completed round's files, record and checkpoint."""
    _stop.durable_depth += 1
    try:
        yield
    finally:
        _stop.durable_depth -= 1
    if _stop.pending and not _stop.durable_depth:
        _stop.pending = False
        raise StopRequested(_stop.requested)
