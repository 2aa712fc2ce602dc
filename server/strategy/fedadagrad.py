"""FedAdagrad (Reddi et al., 2021, https://arxiv.org/abs/2003.00295): v <- v + Delta^2. No first-moment decay
(beta_1 = 0, m = Delta), as the paper's experiments and Flower's FedAdagrad."""

from __future__ import annotations

from flb.adapters.arithmetic import weighted_average
from flb.config import FedAdagradSettings
from flb.types import AdapterState
from server.strategy.aggregate import adagrad_second_moment
from server.strategy.base import BuildContext, Mean
from server.strategy.server_optimizer import AdaptiveServerOptimizer


class FedAdagrad(AdaptiveServerOptimizer):
    def __init__(self, settings: FedAdagradSettings, *, mean: Mean = weighted_average):
        super().__init__(eta=settings.eta, beta_1=0.0, tau=settings.tau, mean=mean)

    def second_moment(self, v: AdapterState, delta: AdapterState) -> AdapterState:
        return adagrad_second_moment(v, delta)


def build(context: BuildContext) -> FedAdagrad:
    return FedAdagrad(context.config.strategy.fedadagrad, mean=context.mean)
