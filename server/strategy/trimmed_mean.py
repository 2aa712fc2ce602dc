"""Coordinate-wise trimmed mean (Yin et al., 2018, https://arxiv.org/abs/1803.01498): per parameter, drop the
int(beta * n) largest and smallest client values and average the rest. Unweighted, as Flower's FedTrimmedAvg."""
from __future__ import annotations

from flb.types import AdapterState, ClientUpdate
from server.strategy.aggregate import trimmed_mean
from server.strategy.base import Strategy, require_setting


class TrimmedMean(Strategy):
    def __init__(self, *, beta: float):
        require_setting(0 <= beta < 0.5, "strategy.trimmed_mean.beta", beta, "a number in [0, 0.5)")
        self.beta = beta

    def aggregate(self, global_adapter: AdapterState, updates: list[ClientUpdate], round: int,
                  num_sampled: int) -> AdapterState:
        return trimmed_mean([u.tensors for u in updates], self.beta)
