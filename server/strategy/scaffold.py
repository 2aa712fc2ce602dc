"""SCAFFOLD (Karimireddy et al., 2020, https://arxiv.org/abs/1910.06378), Algorithm 1, the server's part: it sends
its control variate c with the global adapter x and, from the sampled clients S of N, takes
    x <- x + eta_g mean_S (y_i - x),    c <- c + (|S| / N) mean_S delta c_i
(unweighted means, as in the paper). The clients' part (the correction c - c_i of each local step, and c_i) is
flb.local_objective; c is zero before the first round and is checkpointed with the strategy's state."""

from __future__ import annotations

from flb.adapters.arithmetic import weighted_average
from flb.config import ScaffoldSettings
from flb.types import AdapterState, ClientUpdate
from server.strategy.base import BuildContext, Strategy


class Scaffold(Strategy):
    def __init__(self, settings: ScaffoldSettings, *, num_clients: int):
        self.server_learning_rate, self.num_clients = settings.server_learning_rate, num_clients
        self.variate: AdapterState = {}  # c; {} before the first round: zero

    def client_extras(self, global_adapter: AdapterState) -> AdapterState:
        return _copied(self.variate) or {name: t.new_zeros(t.shape) for name, t in global_adapter.items()}

    def aggregate(
        self, global_adapter: AdapterState, updates: list[ClientUpdate], round: int, num_sampled: int
    ) -> AdapterState:
        self.variate = next_variate(self.client_extras(global_adapter), [u.extras for u in updates], self.num_clients)
        return server_step(global_adapter, [u.tensors for u in updates], self.server_learning_rate)

    def state_dict(self) -> dict:
        return {"variate": _copied(self.variate)}

    def load_state_dict(self, state: dict) -> None:
        self.variate = _copied(state.get("variate", {}))


def build(context: BuildContext) -> Scaffold:
    return Scaffold(context.config.strategy.scaffold, num_clients=context.config.num_clients)


def server_step(global_adapter: AdapterState, adapters: list[AdapterState], learning_rate: float) -> AdapterState:
    """x + eta_g mean_i (y_i - x), in float32, cast back to each tensor's dtype."""
    mean = weighted_average([(adapter, 1.0) for adapter in adapters])
    return {
        name: (x.float() + learning_rate * (mean[name].float() - x.float())).to(x.dtype)
        for name, x in global_adapter.items()
    }


def next_variate(variate: AdapterState, deltas: list[AdapterState], num_clients: int) -> AdapterState:
    """c + (|S| / N) mean_S delta c_i = c + sum_S delta c_i / N, in float32, cast back."""
    return {
        name: (c.float() + sum(delta[name].float() for delta in deltas) / num_clients).to(c.dtype)
        for name, c in variate.items()
    }


def _copied(state: AdapterState) -> AdapterState:
    return {name: tensor.clone() for name, tensor in state.items()}
