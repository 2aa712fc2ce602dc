"""FedAdam (Reddi et al., 2021, https://arxiv.org/abs/2003.00295): v <- beta_2 v + (1 - beta_2) Delta^2, without
bias correction as the paper's Algorithm 2 (Flower's FedAdam corrects eta; see AdaptiveServerOptimizer)."""

from __future__ import annotations

from flb.adapters.arithmetic import weighted_average
from flb.config import FedAdamSettings
from flb.types import AdapterState
from server.strategy.aggregate import adam_second_moment
from server.strategy.base import BuildContext, Mean
from server.strategy.server_optimizer import AdaptiveServerOptimizer


class FedAdam(AdaptiveServerOptimizer):
    def __init__(self, settings: FedAdamSettings, *, mean: Mean = weighted_average):
        super().__init__(eta=settings.eta, beta_1=settings.beta_1, tau=settings.tau, mean=mean)
        self.beta_2 = settings.beta_2

    def second_moment(self, v: AdapterState, delta: AdapterState) -> AdapterState:
        return adam_second_moment(v, delta, self.beta_2)


def build(context: BuildContext) -> FedAdam:
    return FedAdam(context.config.strategy.fedadam, mean=context.mean)
