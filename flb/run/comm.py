"""Communication accounting: the bytes of the tensors sent to and received from clients, per round and in total.

Counted by the server from the tensors themselves (never from what a client says it sent): each sampled client
is sent the global adapter and the strategy's extras (SCAFFOLD's c); each client that answers sends its update and
its extras back, counted whether or not the update is then accepted. Framing (safetensors headers, Flower's
messages) is not counted: these are the payload bytes a user sizes a link for. In split mode the frames that
cross the cut each step (hidden states and gradients, safetensors bytes as sent) are counted apart, per round.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from flb.types import AdapterState, ClientUpdate

log = logging.getLogger(__name__)
MB = 10**6


def tensor_bytes(*states: AdapterState) -> int:
    """The bytes of every tensor in `states` (elements x element size)."""
    return sum(tensor.numel() * tensor.element_size() for state in states for tensor in state.values())


@dataclass
class CommTracker:
    """Running totals, a metrics row per round, and one warning when comm.budget_mb is passed."""

    budget_mb: float | None = None
    total_down: int = 0  # bytes sent to clients so far
    total_up: int = 0  # bytes received from clients so far
    cut: Callable[[], object] | None = None  # mode split: the round's frames across the cut (flb.split.cut.Traffic)

    def count(
        self, round: int, sent: AdapterState, extras: AdapterState, num_sampled: int, received: list[ClientUpdate]
    ) -> dict:
        """Add one round; its row for metrics.jsonl."""
        before = self.total_down + self.total_up
        down = tensor_bytes(sent, extras) * num_sampled
        up = sum(tensor_bytes(update.tensors, update.extras) for update in received)
        self.total_down, self.total_up = self.total_down + down, self.total_up + up
        after = self.total_down + self.total_up
        if self.budget_mb is not None and before <= self.budget_mb * MB < after:
            log.warning(
                "round %d: %.2f MB sent to and from clients so far, past comm.budget_mb = %g",
                round,
                after / MB,
                self.budget_mb,
            )
        row = {
            "comm_down_bytes": down,
            "comm_up_bytes": up,
            "comm_total_down_bytes": self.total_down,
            "comm_total_up_bytes": self.total_up,
        }
        if self.cut is not None:
            traffic = self.cut()
            row.update(
                split_to_server_bytes=traffic.to_server,
                split_to_client_bytes=traffic.to_client,
                split_forwards=traffic.forwards,
            )
        return row

    def restore(self, last_round_metrics: dict) -> None:
        """Continue the totals from the last completed round's metrics row (a resumed run)."""
        self.total_down = last_round_metrics.get("comm_total_down_bytes", 0)
        self.total_up = last_round_metrics.get("comm_total_up_bytes", 0)
