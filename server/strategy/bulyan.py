"""Bulyan (El Mhamdi et al., 2018, https://arxiv.org/abs/1802.07927): Krum picks n - 2f client adapters one at a
time, then a coordinate-wise trimmed mean around their median; tolerates f Byzantine clients when n >= 4f + 3."""

from __future__ import annotations

from flb.config import BulyanSettings
from flb.types import AdapterState, ClientUpdate
from server.strategy.aggregate import bulyan
from server.strategy.base import BuildContext, Strategy
from server.strategy.krum import require_updates


class Bulyan(Strategy):
    def __init__(self, settings: BulyanSettings):
        self.num_malicious = settings.num_malicious

    def aggregate(
        self, global_adapter: AdapterState, updates: list[ClientUpdate], round: int, num_sampled: int
    ) -> AdapterState:
        require_updates(len(updates), 4 * self.num_malicious + 3, "bulyan")
        return bulyan([u.tensors for u in updates], self.num_malicious)


def build(context: BuildContext) -> Bulyan:
    return Bulyan(context.config.strategy.bulyan)
