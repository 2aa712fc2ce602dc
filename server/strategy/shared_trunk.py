"""Split learning's shared trunk (split.trunk shared), as a wrapper around any strategy: the wrapped strategy
aggregates the updates (the clients' parts), then the trunk is the one the last client trained, since each sampled
client continued the trunk of the one before it (FL-LLaMA's scheme). Averaging those trunks would mix a trunk with
the trunks it was trained from."""

from __future__ import annotations

from flb.split.cut import SplitPlan
from flb.types import AdapterState, ClientUpdate
from server.strategy.base import Strategy


class SharedTrunk(Strategy):
    def __init__(self, strategy: Strategy, plan: SplitPlan):
        self.strategy, self.plan = strategy, plan

    def aggregate(
        self, global_adapter: AdapterState, updates: list[ClientUpdate], round: int, num_sampled: int
    ) -> AdapterState:
        aggregated = self.strategy.aggregate(global_adapter, updates, round, num_sampled)
        if not updates:
            return aggregated
        # clients train in client id order; the updates come in the chain's order (by address)
        last_trained = max(updates, key=lambda update: update.client_id)
        return {**aggregated, **self.plan.trunk_part(last_trained.tensors)}

    def client_extras(self, global_adapter: AdapterState) -> AdapterState:
        return self.strategy.client_extras(global_adapter)

    def mean_weights(self, updates: list[ClientUpdate]) -> list[float]:
        return self.strategy.mean_weights(updates)

    def state_dict(self) -> dict:
        return {"inner": self.strategy.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.strategy.load_state_dict(state.get("inner", {}))
