"""FedAvg (McMahan et al., 2017, https://arxiv.org/abs/1602.05629): average weighted by examples."""
from __future__ import annotations

from flb.types import AdapterState, ClientUpdate
from flb.adapter_math import weighted_average
from server.strategy.base import Strategy


class FedAvg(Strategy):
    def aggregate(self, global_adapter: AdapterState, updates: list[ClientUpdate], round: int,
                  num_sampled: int) -> AdapterState:
        return weighted_average([(u.tensors, u.num_examples) for u in updates])
