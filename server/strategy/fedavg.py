"""FedAvg (McMahan et al., 2017, https://arxiv.org/abs/1602.05629): average weighted by examples, with the mean
strategy.lora_aggregation picks (flb.adapters.lora_aggregation.MEANS: under svd, of the LoRA products, re-factorised)."""
from __future__ import annotations

from typing import Callable

from flb.adapters.arithmetic import weighted_average
from flb.types import AdapterState, ClientUpdate
from server.strategy.base import Strategy


class FedAvg(Strategy):
    output_is_mean = True

    def __init__(self, *, mean: Callable[[list[tuple[AdapterState, float]]], AdapterState] = weighted_average):
        self.mean = mean

    def aggregate(self, global_adapter: AdapterState, updates: list[ClientUpdate], round: int,
                  num_sampled: int) -> AdapterState:
        return self.mean([(u.tensors, u.num_examples) for u in updates])
