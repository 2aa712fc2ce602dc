"""Atomic file writes: a reader, or a run killed at any moment (power cut included), finds the old file or the new
one, never part of one. The one writer of the run directory, the key files and the embedded chain's snapshot (its blocks
are appended after it: chain.embedded)."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path


def write_atomic(path: str | Path, data: bytes, mode: int | None = None, *, overwrite: bool = True) -> None:
    """Put `data` at `path`: written to a temporary file beside it, flushed to disk, renamed over `path`, then the
    rename itself flushed (the directory's fsync), so it survives a crash; on any error `path` is as it was and the
    temporary file is gone.

    `mode`: the file's permission bits from its creation, the umask applied (0o600: its owner only, never readable
    by others even for a moment); None: as open() creates a file. `overwrite=False`: FileExistsError, and nothing
    written, when `path` exists (a key is never replaced)."""
    path = Path(path)
    temporary = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # unlike a rename, fails when `path` exists
            temporary.unlink()
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def write_json_atomic(path: str | Path, data, mode: int | None = 0o644, sort_keys: bool = True) -> None:
    """`data` as indented JSON through write_atomic. `mode` 0o600 keeps a party's private file from everyone else;
    `sort_keys=False` keeps the data's order."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys).encode(), mode)


def _fsync_directory(directory: Path) -> None:
    """Flush a directory's entries (here: the rename) to disk."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
