"""The client's privacy hook: what leaves the client passes through here.

Local differential privacy plugs in as another `UpdatePrivacy`; the default sends the update as is.
"""
from __future__ import annotations

from typing import Protocol

from flb.types import AdapterState


class UpdatePrivacy(Protocol):
    def privatize(self, local: AdapterState, global_adapter: AdapterState, round: int) -> tuple[AdapterState, dict]:
        """Return the adapter to send and what was spent (e.g. {"epsilon": ..., "delta": ...})."""


class NoPrivacy:
    def privatize(self, local: AdapterState, global_adapter: AdapterState, round: int) -> tuple[AdapterState, dict]:
        return local, {}
