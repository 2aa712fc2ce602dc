"""FedAdagrad (Reddi et al., 2021, https://arxiv.org/abs/2003.00295): v <- v + Delta^2. No first-moment decay
(beta_1 = 0, m = Delta), as the paper's experiments and Flower's FedAdagrad."""
from __future__ import annotations

from flb.adapters.arithmetic import weighted_average
from flb.types import AdapterState
from server.strategy.aggregate import adagrad_second_moment
from server.strategy.server_optimizer import AdaptiveServerOptimizer, Mean


class FedAdagrad(AdaptiveServerOptimizer):
    name = "fedadagrad"

    def __init__(self, *, eta: float, tau: float, mean: Mean = weighted_average):
        super().__init__(eta=eta, beta_1=0.0, tau=tau, mean=mean)

    def second_moment(self, v: AdapterState, delta: AdapterState) -> AdapterState:
        return adagrad_second_moment(v, delta)
