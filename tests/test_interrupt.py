"""flb.run.stop: the first stop signal stops where the run is, except inside a durable section; a second ends the
process at once. Real signals."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest

from flb.run.stop import EXIT_CODE, StopRequested, durable, stop_signals

REPO = Path(__file__).resolve().parents[1]


def test_a_signal_inside_a_durable_section_stops_the_run_only_once_the_section_is_done():
    done = []
    with stop_signals():
        with pytest.raises(StopRequested) as stopped:
            with durable():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # the handler has run by now
                done.append("the round's checkpoint")
            done.append("the next round")
    assert done == ["the round's checkpoint"]
    assert stopped.value.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back


def test_a_signal_inside_logging_stops_the_run_once_out_of_it_and_leaves_the_handlers_lock_free():
    """Raised inside a handler (between its acquire() and its try, at worst) the stop would leave the handler's lock
    held, and the ledger's sender thread blocked on its next log line: it is raised once logging has returned."""

    class SlowHandler(logging.Handler):
        def emit(self, record):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the signal lands here, inside logging

    handler, logger = SlowHandler(), logging.getLogger("flb.test-stop")
    logger.addHandler(handler)
    try:
        with stop_signals(), pytest.raises(StopRequested) as stopped:
            logger.warning("a line")
            time.sleep(5)
    finally:
        logger.removeHandler(handler)
    assert [frame.name for frame in traceback.extract_tb(stopped.tb)][-1] != "emit"
    assert all("logging" not in frame.filename for frame in traceback.extract_tb(stopped.tb))
    locked = []
    other = threading.Thread(target=lambda: locked.append(handler.lock.acquire(timeout=1)))
    other.start()
    other.join()
    assert locked == [True]


# cleans up slowly after the first signal, as a run waiting for its ledger's confirmations would
SLOW_CLEANUP = """
import time
from flb.run.stop import StopRequested, stop_signals
with stop_signals():
    try:
        print("training", flush=True)
        time.sleep(60)
    except StopRequested as stop:
        print("cleaning up after", stop.signal_name, flush=True)
        time.sleep(60)
        print("cleaned up", flush=True)
"""


def test_a_second_signal_ends_the_process_at_once():
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLEANUP], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline() == "training\n"
        process.send_signal(signal.SIGTERM)
        assert process.stdout.readline() == "cleaning up after SIGTERM\n"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == EXIT_CODE
    finally:
        if process.poll() is None:
            process.kill()
    assert "cleaned up" not in process.stdout.read()
    stderr = process.stderr.read()
    assert "SIGINT again: stopped at once (exit 130)" in stderr and "Traceback" not in stderr
