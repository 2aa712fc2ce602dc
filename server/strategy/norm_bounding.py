"""Norm bounding (Sun et al., 2019, "Can You Really Backdoor Federated Learning?",
https://arxiv.org/abs/1911.07963), as a wrapper around any strategy: each update's change from the global adapter
is clipped to max_norm in L2 over the whole adapter, then the wrapped strategy aggregates the bounded updates with
their example counts. No noise: it limits what one update can do, it is not differential privacy."""

from __future__ import annotations

import dataclasses

from flb.adapters.arithmetic import add, clip_inplace, subtract
from flb.config import NormBoundingSettings
from flb.types import AdapterState, ClientUpdate
from server.strategy.base import BuildContext, Strategy


class NormBounding(Strategy):
    def __init__(self, strategy: Strategy, settings: NormBoundingSettings):
        self.strategy, self.max_norm = strategy, settings.max_norm

    def aggregate(
        self, global_adapter: AdapterState, updates: list[ClientUpdate], round: int, num_sampled: int
    ) -> AdapterState:
        bounded = [dataclasses.replace(u, tensors=self._bounded(global_adapter, u.tensors)) for u in updates]
        return self.strategy.aggregate(global_adapter, bounded, round, num_sampled)

    def _bounded(self, global_adapter: AdapterState, tensors: AdapterState) -> AdapterState:
        change = subtract(tensors, global_adapter)
        clip_inplace(change, self.max_norm)
        return add(global_adapter, change)

    def client_extras(self, global_adapter: AdapterState) -> AdapterState:
        return self.strategy.client_extras(global_adapter)

    def state_dict(self) -> dict:
        return {"inner": self.strategy.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.strategy.load_state_dict(state.get("inner", {}))


def build(context: BuildContext) -> NormBounding:
    return NormBounding(context.inner, context.config.strategy.norm_bounding)
