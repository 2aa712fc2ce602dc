"""What every strategy offers the round coordinator."""
from __future__ import annotations

from abc import ABC, abstractmethod

from flb.errors import ConfigError, shown
from flb.types import AdapterState, ClientUpdate


def require_setting(ok: bool, key: str, value, allowed: str) -> None:
    """A constructor's check, worded as flb.config words a bad config value."""
    if not ok:
        raise ConfigError(f"{key}: invalid value {shown(value)}; allowed: {allowed}")


class Strategy(ABC):
    # True when the output is a mean of the updates given: what the DP wrappers' noise is calibrated for
    # (flb.config.MEAN_STRATEGY_NAMES lists the same strategies by name)
    output_is_mean: bool = False

    @abstractmethod
    def aggregate(self, global_adapter: AdapterState, updates: list[ClientUpdate], round: int,
                  num_sampled: int) -> AdapterState:
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

    def load_state_dict(self, state: dict) -> None:
        pass
