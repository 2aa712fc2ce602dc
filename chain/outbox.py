"""A durable outbox: every ledger write is an append-only, fsynced JSON line before it is sent.

The state of each record is the replay of its lines (queued -> submitted -> confirmed,
and back to queued when a confirmed record is missing from the chain), so a crash at any point
loses nothing: a torn last line is ignored, everything before it is kept."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from chain.errors import ChainError

QUEUED, SUBMITTED, CONFIRMED = "queued", "submitted", "confirmed"


@dataclass
class Entry:
    id: str
    kind: str
    payload: dict
    status: str = QUEUED
    tx: str | None = None
    block: int | None = None
    gas_used: int | None = None
    error: str | None = None
    history: list[str] = field(default_factory=list)

    def apply(self, line: dict) -> None:
        self.status = line["status"]
        self.history.append(line["status"])
        for key in ("tx", "block", "gas_used", "error"):
            if key in line:
                setattr(self, key, line[key])


class Outbox:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._replay()
        self._file = open(self.path, "a", encoding="utf-8")

    def _replay(self) -> None:
        if not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for number, text in enumerate(lines):
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                if number < len(lines) - 1:
                    raise ChainError(
                        f"outbox {self.path}: line {number + 1} is corrupt; restore the file from a backup"
                    ) from None
                # a torn final write from a crash was never acknowledged: drop it
                self.path.write_text("".join(kept + "\n" for kept in lines[:-1]), encoding="utf-8")
                return
            self._apply(line)

    def _apply(self, line: dict) -> None:
        if line["status"] == QUEUED and line["id"] not in self._entries:
            self._entries[line["id"]] = Entry(line["id"], line["kind"], line["payload"], history=[QUEUED])
        else:
            self._entries[line["id"]].apply(line)

    def _append(self, line: dict) -> None:
        self._file.write(json.dumps(line, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._apply(line)

    def add(self, entry_id: str, kind: str, payload: dict) -> bool:
        """Queue a record; False (and nothing written) when this id is already in the outbox."""
        with self._lock:
            if entry_id in self._entries:
                return False
            self._append({"id": entry_id, "kind": kind, "payload": payload, "status": QUEUED})
            return True

    def mark(self, entry_id: str, status: str, **fields) -> None:
        with self._lock:
            self._append({"id": entry_id, "status": status, **fields})

    def get(self, entry_id: str) -> Entry | None:
        with self._lock:
            return self._entries.get(entry_id)

    def entries(self) -> list[Entry]:
        with self._lock:
            return list(self._entries.values())

    def next_pending(self) -> Entry | None:
        """The oldest record not yet confirmed (records go out in the order queued)."""
        with self._lock:
            return next((e for e in self._entries.values() if e.status in (QUEUED, SUBMITTED)), None)

    def count(self, *statuses: str) -> int:
        with self._lock:
            return sum(e.status in statuses for e in self._entries.values())

    def close(self) -> None:
        self._file.close()
