"""What every strategy offers the round coordinator, and what its builder gets.

A strategy takes its settings already validated by flb.config and does not check them again; what it can do (its
output is a mean, it wraps another, it is DP) is its entry in flb.config.STRATEGIES, not an attribute here."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flb.adapters.lora_aggregation import MEANS
from flb.types import AdapterState, ClientUpdate

if TYPE_CHECKING:
    from flb.config import Config
    from flb.privacy.secret_random import SecretRandom

Mean = Callable[[list[tuple[AdapterState, float]]], AdapterState]


class Strategy(ABC):
    @abstractmethod
    def aggregate(
        self, global_adapter: AdapterState, updates: list[ClientUpdate], round: int, num_sampled: int
    ) -> AdapterState:
        """The next global adapter from the current one and the round's valid updates."""

    def client_extras(self, global_adapter: AdapterState) -> AdapterState:
        """Tensors sent to every sampled client with `global_adapter` (SCAFFOLD's server control variate); each
        update must return `extras` with exactly their names, shapes and dtypes. Empty for most strategies; a
        wrapper returns its wrapped strategy's."""
        return {}

    def mean_weights(self, updates: list[ClientUpdate]) -> list[float]:
        """The weights of the mean of the updates' LoRA products that the round's `lora_aggregation_error` compares
        the result with: FedAvg's, by examples; the DP wrappers' mean is unweighted. A strategy that takes no mean
        is compared with FedAvg's."""
        return [u.num_examples for u in updates]

    def privacy_spent(self) -> dict:
        """Epsilon so far and how it is computed (flb.privacy.accounting.spent); empty for strategies without DP."""
        return {}

    def state_dict(self) -> dict:
        """State to checkpoint (empty for stateless strategies): JSON-serialisable except that tensors may be values
        anywhere in it (RunDir keeps those in safetensors); a wrapper nests its inner strategy's under "inner". A
        copy: aggregating afterwards must not change it (leave-one-out scoring loads it back)."""
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: B027 (a stateless strategy loads nothing)
        pass


@dataclass(frozen=True)
class BuildContext:
    """What `build(context)` in server/strategy/<name>.py makes its strategy from."""

    config: Config
    random: SecretRandom  # the server's secret generator: the DP strategies draw their noise from it
    inner: Strategy | None = None  # a wrapper's strategy.wraps, built

    @property
    def mean(self) -> Mean:
        """The mean of the clients' adapters strategy.lora_aggregation picks (FedAvg's, and the server optimizers')."""
        return MEANS[self.config.strategy.lora_aggregation]
