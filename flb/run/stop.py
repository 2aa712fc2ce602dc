"""A clean stop. While `stop_signals()` is in force, the first Ctrl-C (SIGINT) or SIGTERM raises StopRequested in the
main thread where the run is, so nothing new is finished; inside `durable()` (a round being made durable) it waits
for the section to end. A second signal ends the process at once: everything saved before it stays saved.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

EXIT_CODE = 130  # as a shell reports a process stopped by Ctrl-C
SIGNALS = (signal.SIGINT, signal.SIGTERM)


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
    if _stop.durable_depth:
        _stop.pending = True
        return
    raise StopRequested(name)


@contextlib.contextmanager
def stop_signals():
    """SIGINT and SIGTERM stop the process cleanly (as above) for the block; the previous handlers come back after."""
    previous = {signum: signal.signal(signum, _on_signal) for signum in SIGNALS}
    _stop.requested, _stop.pending = None, False
    try:
        yield
    finally:
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
