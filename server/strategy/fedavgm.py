"""FedAvgM: server momentum on the pseudo-gradient (Hsu et al., 2019, https://arxiv.org/abs/1909.06335), as
Flower's FedAvgM and torch.optim.SGD: M <- beta M + Delta, x <- x + eta M (Flower keeps the gradient's sign,
-Delta, and subtracts: the same numbers)."""
from __future__ import annotations

from flb.adapters.arithmetic import weighted_average
from flb.types import AdapterState
from server.strategy.aggregate import momentum_buffer
from server.strategy.base import require_setting
from server.strategy.server_optimizer import Mean, Moments, ServerOptimizer


class FedAvgM(ServerOptimizer):
    moment_names = ("momentum",)

    def __init__(self, *, server_learning_rate: float, server_momentum: float, mean: Mean = weighted_average):
        super().__init__(mean=mean)
        require_setting(server_learning_rate > 0, "strategy.fedavgm.server_learning_rate", server_learning_rate,
                        "a number > 0")
        require_setting(0 <= server_momentum < 1, "strategy.fedavgm.server_momentum", server_momentum,
                        "a number in [0, 1)")
        self.server_learning_rate, self.server_momentum = server_learning_rate, server_momentum

    def next_moments(self, moments: Moments, delta: AdapterState) -> Moments:
        return {"momentum": momentum_buffer(moments["momentum"], delta, self.server_momentum)}

    def step(self, current: AdapterState, moments: Moments) -> AdapterState:
        return {name: x + self.server_learning_rate * moments["momentum"][name] for name, x in current.items()}
