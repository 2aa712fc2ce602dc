"""FedAvg (McMahan et al., 2017, https://arxiv.org/abs/1602.05629): average weighted by examples, with the mean
strategy.lora_aggregation picks (flb.adapters.lora_aggregation.MEANS: under svd, of the LoRA products,
re-factorised)."""

from __future__ import annotations

from flb.adapters.arithmetic import weighted_average
from flb.types import AdapterState, ClientUpdate
from server.strategy.base import BuildContext, Mean, Strategy


class FedAvg(Strategy):
    def __init__(self, *, mean: Mean = weighted_average):
        self.mean = mean

    def aggregate(
        self, global_adapter: AdapterState, updates: list[ClientUpdate], round: int, num_sampled: int
    ) -> AdapterState:
        return self.mean([(u.tensors, u.num_examples) for u in updates])


def build(context: BuildContext) -> FedAvg:
    return FedAvg(mean=context.mean)
