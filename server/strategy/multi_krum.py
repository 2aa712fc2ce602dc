"""Multi-Krum (Blanchard et al., 2017, https://arxiv.org/abs/1703.02757): the plain mean of the m client adapters
with the best Krum scores. Flower weights that mean by example count; we do not, since a Byzantine client reports
its own count (every robust aggregator here ignores the counts)."""

from __future__ import annotations

from flb.adapters.arithmetic import weighted_average
from flb.config import MultiKrumSettings
from flb.types import AdapterState, ClientUpdate
from server.strategy.aggregate import krum_selection
from server.strategy.base import BuildContext, Strategy
from server.strategy.krum import require_updates


class MultiKrum(Strategy):
    def __init__(self, settings: MultiKrumSettings):
        self.num_malicious, self.num_selected = settings.num_malicious, settings.num_selected

    def aggregate(
        self, global_adapter: AdapterState, updates: list[ClientUpdate], round: int, num_sampled: int
    ) -> AdapterState:
        require_updates(
            len(updates), max(2 * self.num_malicious + 3, self.num_selected + self.num_malicious), "multi_krum"
        )
        chosen = krum_selection([u.tensors for u in updates], self.num_malicious, self.num_selected)
        return weighted_average([(updates[i].tensors, 1) for i in chosen])


def build(context: BuildContext) -> MultiKrum:
    return MultiKrum(context.config.strategy.multi_krum)
