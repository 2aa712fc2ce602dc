"""Coordinate-wise trimmed mean (Yin et al., 2018, https://arxiv.org/abs/1803.01498): per parameter, drop the
int(beta * n) largest and smallest client values and average the rest. Unweighted, as Flower's FedTrimmedAvg."""

from __future__ import annotations

from flb.config import TrimmedMeanSettings
from flb.types import AdapterState, ClientUpdate
from server.strategy.aggregate import trimmed_mean
from server.strategy.base import BuildContext, Strategy


class TrimmedMean(Strategy):
    def __init__(self, settings: TrimmedMeanSettings):
        self.beta = settings.beta

    def aggregate(
        self, global_adapter: AdapterState, updates: list[ClientUpdate], round: int, num_sampled: int
    ) -> AdapterState:
        return trimmed_mean([u.tensors for u in updates], self.beta)


def build(context: BuildContext) -> TrimmedMean:
    return TrimmedMean(context.config.strategy.trimmed_mean)
