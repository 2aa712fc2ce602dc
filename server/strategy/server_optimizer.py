"""What the server optimizers share (fedavgm, fedadagrad, fedadam, fedyogi): each round the clients' adapters,
averaged with weights by example count (with the mean strategy.lora_aggregation picks, as FedAvg), minus the global
adapter give a pseudo-gradient Delta (with the sign of an update); the server takes an optimizer step along it and
keeps the optimizer's moments, in float32, as its state.
Reddi et al., 2021, "Adaptive Federated Optimization", https://arxiv.org/abs/2003.00295
"""

from __future__ import annotations

from abc import abstractmethod

from flb.adapters.arithmetic import weighted_average
from flb.types import AdapterState, ClientUpdate
from server.strategy.aggregate import adaptive_step, first_moment, pseudo_gradient
from server.strategy.base import Mean, Strategy

Moments = dict[str, AdapterState]


class ServerOptimizer(Strategy):
    moment_names: tuple[str, ...]  # the moments a subclass keeps, zero before its first step

    def __init__(self, *, mean: Mean):
        self.mean = mean
        self.moments: Moments = {}

    def aggregate(
        self, global_adapter: AdapterState, updates: list[ClientUpdate], round: int, num_sampled: int
    ) -> AdapterState:
        current = {name: tensor.float() for name, tensor in global_adapter.items()}
        delta = pseudo_gradient(current, self.mean([(u.tensors, u.num_examples) for u in updates]))
        moments = self.moments or {
            key: {name: t.new_zeros(t.shape) for name, t in current.items()} for key in self.moment_names
        }
        self.moments = self.next_moments(moments, delta)
        stepped = self.step(current, self.moments)
        return {name: stepped[name].to(tensor.dtype) for name, tensor in global_adapter.items()}

    @abstractmethod
    def next_moments(self, moments: Moments, delta: AdapterState) -> Moments:
        """The moments after this round's pseudo-gradient."""

    @abstractmethod
    def step(self, current: AdapterState, moments: Moments) -> AdapterState:
        """The next global adapter (float32) from the current one and the updated moments."""

    def state_dict(self) -> dict:
        return {"moments": _copied(self.moments)}

    def load_state_dict(self, state: dict) -> None:
        self.moments = _copied(state.get("moments", {}))


class AdaptiveServerOptimizer(ServerOptimizer):
    """FedAdagrad, FedAdam and FedYogi (Reddi et al., Algorithm 2): m <- beta_1 m + (1 - beta_1) Delta, v by the
    subclass's rule, x <- x + eta m / (sqrt(v) + tau), with m and v starting at zero.

    As the paper's Algorithm 2 there is no bias correction; Flower's FedAdam scales eta by
    sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1)) in round t, FedAdagrad and FedYogi do not."""

    moment_names = ("m", "v")

    def __init__(self, *, eta: float, beta_1: float, tau: float, mean: Mean = weighted_average):
        super().__init__(mean=mean)
        self.eta, self.beta_1, self.tau = eta, beta_1, tau

    def next_moments(self, moments: Moments, delta: AdapterState) -> Moments:
        return {"m": first_moment(moments["m"], delta, self.beta_1), "v": self.second_moment(moments["v"], delta)}

    @abstractmethod
    def second_moment(self, v: AdapterState, delta: AdapterState) -> AdapterState:
        """v after this round's pseudo-gradient."""

    def step(self, current: AdapterState, moments: Moments) -> AdapterState:
        return adaptive_step(current, moments["m"], moments["v"], self.eta, self.tau)


def _copied(moments: Moments) -> Moments:
    return {key: {name: tensor.clone() for name, tensor in state.items()} for key, state in moments.items()}
