"""FedAdam (Reddi et al., 2021, https://arxiv.org/abs/2003.00295): v <- beta_2 v + (1 - beta_2) Delta^2, without
bias correction as the paper's Algorithm 2 (Flower's FedAdam corrects eta; see AdaptiveServerOptimizer)."""
from __future__ import annotations

from flb.adapters.arithmetic import weighted_average
from flb.types import AdapterState
from server.strategy.aggregate import adam_second_moment
from server.strategy.server_optimizer import AdaptiveServerOptimizer, Mean, check_beta_2


class FedAdam(AdaptiveServerOptimizer):
    name = "fedadam"

    def __init__(self, *, eta: float, beta_1: float, beta_2: float, tau: float, mean: Mean = weighted_average):
        super().__init__(eta=eta, beta_1=beta_1, tau=tau, mean=mean)
        check_beta_2(self.name, beta_2)
        self.beta_2 = beta_2

    def second_moment(self, v: AdapterState, delta: AdapterState) -> AdapterState:
        return adam_second_moment(v, delta, self.beta_2)
