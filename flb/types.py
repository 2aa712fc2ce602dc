"""The data that crosses boundaries: adapter states, client updates, round records, and the two
small interfaces the round coordinator drives (a Client and a Ledger)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    AdapterState = dict[str, torch.Tensor]
else:
    AdapterState = dict


@dataclass
class ClientUpdate:
    """What one client returns from one round: its full local adapter and how it got there."""

    client_id: int
    round: int
    tensors: AdapterState
    num_examples: int
    train_loss: float
    wall_time_s: float
    num_bytes: int
    digest: str
    privacy: dict = field(default_factory=dict)


@dataclass
class RoundRecord:
    """One completed round, as the ledger records it."""

    round: int
    global_digest: str
    client_ids: list[int]
    update_digests: list[str]
    num_examples: list[int]
    update_num_bytes: list[int]
    metrics: dict


@runtime_checkable
class Client(Protocol):
    client_id: int
    num_examples: int
    data_digest: str

    def fit(self, global_adapter: AdapterState, round: int) -> ClientUpdate: ...

    def privacy_spent(self) -> dict:
        """Epsilon its local DP has spent so far and how (flb.accounting.spent); {} without local DP."""

    def state_dict(self) -> dict:
        """JSON state a resumed run needs (its privacy accountant)."""

    def load_state_dict(self, state: dict) -> None: ...


class Ledger(Protocol):
    """Where data uploads and rounds are recorded; `chain/` implements it on an EVM."""

    def record_data_upload(self, client_id: int, data_digest: str) -> None: ...

    def record_round(self, record: RoundRecord) -> None: ...

    def close(self) -> None: ...


class NullLedger:
    """The ledger when `chain_record` is false: records nothing."""

    def record_data_upload(self, client_id: int, data_digest: str) -> None:
        pass

    def record_round(self, record: RoundRecord) -> None:
        pass

    def close(self) -> None:
        pass
