"""What every strategy offers the round coordinator."""
from __future__ import annotations

from abc import ABC, abstractmethod

from flb.types import AdapterState, ClientUpdate


class Strategy(ABC):
    @abstractmethod
    def aggregate(self, global_adapter: AdapterState, updates: list[ClientUpdate], round: int,
                  num_sampled: int) -> AdapterState:
        """The next global adapter from the current one and the round's valid updates."""

    def privacy_spent(self) -> dict:
        """Epsilon so far and how it is computed (flb.accounting.spent); empty for strategies without DP."""
        return {}

    def state_dict(self) -> dict:
        """JSON-serialisable state to checkpoint (empty for stateless strategies)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
