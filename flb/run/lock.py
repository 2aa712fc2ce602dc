"""One process per run directory: an exclusive lock held for as long as the run goes on.

The operating system drops an flock when its process dies however it dies, so a lock left by a killed
run is taken over by the next one; a live holder is refused with its PID."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from flb.errors import RunDirError

LOCK_FILE = ".lock"


class RunLock:
    def __init__(self, run_path: str | Path):
        self.path = Path(run_path) / LOCK_FILE
        self._handle = None

    def __enter__(self) -> RunLock:
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunDirError(
                f"{self.path.parent}: another process (pid {holder}) is running this run directory; "
                "wait for it to finish or stop it"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc_info) -> None:
        self._handle.close()  # closing releases the lock
        self._handle = None
