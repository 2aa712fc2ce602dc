"""Logging for a run: the console (secrets redacted, INFO for our packages), lines above tqdm's bars, and a copy in
the run's run.log."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from pathlib import Path


def configure_logging() -> None:
    from flb.run.redaction import RedactingFilter

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    for name in ("flb", "server", "client", "chain", "flb_flower"):
        logging.getLogger(name).setLevel(logging.INFO)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # a CPU kernel hint on import, not a problem
    # transformers deprecates the name peft still calls (once per loaded model): not the user's to act on
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


@contextlib.contextmanager
def logging_to(path: Path):
    """Also log to `path` (URLs redacted) while the run goes on; the handler is removed when it ends."""
    from flb.run.redaction import RedactingFilter

    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def logs_above_bars():
    """The console's log lines printed above tqdm's bars instead of through them, while the block runs. Only a console
    handler that is there is replaced (an embedding program's logging stays as it set it up)."""
    consoles = [
        handler
        for handler in logging.root.handlers
        if type(handler) is logging.StreamHandler and handler.stream in (sys.stdout, sys.stderr)
    ]
    replaced = {console: AboveBars.like(console) for console in consoles}
    logging.root.handlers = [replaced.get(handler, handler) for handler in logging.root.handlers]
    try:
        yield
    finally:
        logging.root.handlers = [
            next((console for console, new in replaced.items() if new is handler), handler)
            for handler in logging.root.handlers
        ]


class AboveBars(logging.StreamHandler):
    """Writes the main thread's log lines with tqdm.write (above the bars) and other threads' directly: a stop signal
    raised inside a bar update can leave tqdm's lock held by the main thread, and another thread (the ledger's
    sender) waiting for it would never finish."""

    @classmethod
    def like(cls, console: logging.StreamHandler) -> AboveBars:
        handler = cls(console.stream)
        handler.setFormatter(console.formatter)
        for each in console.filters:
            handler.addFilter(each)
        return handler

    def emit(self, record):
        import threading

        if threading.current_thread() is not threading.main_thread():
            return super().emit(record)
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)
