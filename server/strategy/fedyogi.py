"""FedYogi (Reddi et al., 2021, https://arxiv.org/abs/2003.00295): FedAdam with v <- v - (1 - beta_2) Delta^2
sign(v - Delta^2), so v grows no faster than Delta^2 allows (Zaheer et al., 2018, Yogi)."""

from __future__ import annotations

from flb.types import AdapterState
from server.strategy.aggregate import yogi_second_moment
from server.strategy.base import BuildContext
from server.strategy.fedadam import FedAdam


class FedYogi(FedAdam):
    def second_moment(self, v: AdapterState, delta: AdapterState) -> AdapterState:
        return yogi_second_moment(v, delta, self.beta_2)


def build(context: BuildContext) -> FedYogi:
    return FedYogi(context.config.strategy.fedyogi, mean=context.mean)
