"""Krum (Blanchard et al., 2017, https://arxiv.org/abs/1703.02757): the next global adapter is the one client
adapter whose n - f - 2 nearest neighbours are closest to it; tolerates f Byzantine clients when n >= 2f + 3."""

from __future__ import annotations

from flb.config import KrumSettings
from flb.errors import ConfigError
from flb.types import AdapterState, ClientUpdate
from server.strategy.aggregate import krum_selection
from server.strategy.base import BuildContext, Strategy


class Krum(Strategy):
    def __init__(self, settings: KrumSettings):
        self.num_malicious = settings.num_malicious

    def aggregate(
        self, global_adapter: AdapterState, updates: list[ClientUpdate], round: int, num_sampled: int
    ) -> AdapterState:
        require_updates(len(updates), 2 * self.num_malicious + 3, "krum")
        [best] = krum_selection([u.tensors for u in updates], self.num_malicious, 1)
        return {name: tensor.clone() for name, tensor in updates[best].tensors.items()}


def build(context: BuildContext) -> Krum:
    return Krum(context.config.strategy.krum)


def require_updates(count: int, needed: int, name: str) -> None:
    """flb.config refuses settings that could leave a round short; this guards direct use."""
    if count < needed:
        raise ConfigError(
            f"strategy.{name}.num_malicious: {name} needs at least {needed} updates, got {count}; "
            f"raise server.min_clients or lower strategy.{name}.num_malicious"
        )
