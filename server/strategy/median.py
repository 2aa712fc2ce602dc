"""Coordinate-wise median (Yin et al., 2018, https://arxiv.org/abs/1803.01498): each parameter is the median of
the clients' values, so fewer than half the clients cannot drag it anywhere. Unweighted, as Flower's FedMedian."""

from __future__ import annotations

from flb.types import AdapterState, ClientUpdate
from server.strategy.aggregate import coordinate_median
from server.strategy.base import BuildContext, Strategy


class Median(Strategy):
    def aggregate(
        self, global_adapter: AdapterState, updates: list[ClientUpdate], round: int, num_sampled: int
    ) -> AdapterState:
        return coordinate_median([u.tensors for u in updates])


def build(context: BuildContext) -> Median:
    return Median()
