"""FedAvgM: server momentum on the pseudo-gradient (Hsu et al., 2019, https://arxiv.org/abs/1909.06335), as
Flower's FedAvgM and torch.optim.SGD: M <- beta M + Delta, x <- x + eta M (Flower keeps the gradient's sign,
-Delta, and subtracts: the same numbers)."""

from __future__ import annotations

from flb.adapters.arithmetic import weighted_average
from flb.config import FedAvgMSettings
from flb.types import AdapterState
from server.strategy.aggregate import momentum_buffer
from server.strategy.base import BuildContext, Mean
from server.strategy.server_optimizer import Moments, ServerOptimizer


class FedAvgM(ServerOptimizer):
    moment_names = ("momentum",)

    def __init__(self, settings: FedAvgMSettings, *, mean: Mean = weighted_average):
        super().__init__(mean=mean)
        self.server_learning_rate, self.server_momentum = settings.server_learning_rate, settings.server_momentum

    def next_moments(self, moments: Moments, delta: AdapterState) -> Moments:
        return {"momentum": momentum_buffer(moments["momentum"], delta, self.server_momentum)}

    def step(self, current: AdapterState, moments: Moments) -> AdapterState:
        return {name: x + self.server_learning_rate * moments["momentum"][name] for name, x in current.items()}


def build(context: BuildContext) -> FedAvgM:
    return FedAvgM(context.config.strategy.fedavgm, mean=context.mean)
