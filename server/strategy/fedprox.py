"""FedProx (Li et al., 2020, https://arxiv.org/abs/1812.06127): each client adds the proximal term
mu/2 ||theta - theta_global||^2 over its LoRA parameters to its local objective (flb.local_objective, mu =
strategy.fedprox.mu); the server aggregates as FedAvg."""

from __future__ import annotations

from server.strategy.base import BuildContext
from server.strategy.fedavg import FedAvg


class FedProx(FedAvg):
    """FedAvg's weighted mean: what differs is the clients' objective, which they take from the config."""


def build(context: BuildContext) -> FedProx:
    return FedProx(mean=context.mean)
