"""One writer per chain state file: an exclusive flock on `<state file>.lock`, held while a chain may write it.

The kernel drops a flock when the last descriptor of it closes, so the lock of a process that died
(however it died) frees itself: a stale lock file only names a dead holder and is simply taken. A
child started with the descriptor (anvil) keeps the lock until it has exited too. The lock file
names the holder ('process 12 (anvil 13)') for the error a refused process gets."""

from __future__ import annotations

import fcntl
import os
import re
import time
import weakref
from pathlib import Path

from chain.errors import ChainError

DEAD_HOLDER_WAIT_S = 10.0
_held: weakref.WeakSet[StateLock] = weakref.WeakSet()


class StateLock:
    def __init__(self, state_file: Path, what: str):
        self.state_file = Path(state_file)
        self.path = self.state_file.with_name(self.state_file.name + ".lock")
        self.what = what
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise a ChainError naming the process that holds it. When that process is
        dead but the lock is still held (its anvil writing its state on the way out, its last threads
        exiting), wait up to DEAD_HOLDER_WAIT_S for them to finish."""
        if self.fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + DEAD_HOLDER_WAIT_S
        while not _try_flock(fd):
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            if _is_alive(holder) or time.monotonic() > deadline:
                os.close(fd)
                raise ChainError(
                    f"{self.what} {self.state_file}: in use by {holder}; stop that run first, "
                    "or use another run directory"
                )
            time.sleep(0.05)
        self.fd = fd
        _held.add(self)
        self.name_holder(f"process {os.getpid()}")

    def name_holder(self, holder: str) -> None:
        """What a refused process is told holds the lock, e.g. 'process 12 (anvil 13)'."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, holder.encode() + b"\n", 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            _held.discard(self)

    def _forget_in_forked_child(self) -> None:
        # closing (never LOCK_UN, which would free the parent's lock too) drops the child's reference
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _is_alive(holder: str) -> bool:
    """Whether the process a lock file names first ('process 12 (anvil 13)') still exists."""
    match = re.match(r"process (\d+)", holder)
    if match is None:
        return True
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    return True


def _forget_locks_in_forked_child() -> None:
    """A forked child (a DataLoader worker, multiprocessing) must not keep the parent's locks alive."""
    for lock in list(_held):
        lock._forget_in_forked_child()
    _held.clear()


os.register_at_fork(after_in_child=_forget_locks_in_forked_child)
