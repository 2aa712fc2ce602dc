"""Server-side DP-FedAvg with adaptive clipping: fixed clipping whose C follows the gamma-quantile of
the update norms, as a wrapper around any strategy.

Each round: b_i = 1 when ||delta_i|| <= C (update i was NOT clipped); b = (sum b_i + N(0, sigma_b^2)) / m;
then C <- C * exp(-eta * (b - gamma)). The count is released with noise too, so the aggregate gets
z_update = (z^-2 - (2 sigma_b)^-2)^(-1/2) and both releases together are as private as one Gaussian
with multiplier z, which is what the accountant composes.
Andrew et al., 2021, https://arxiv.org/abs/1905.03871
"""
from __future__ import annotations

from flb.adapters.arithmetic import l2_norm, subtract
from flb.config import check_adaptive_noise
from flb.errors import ConfigError
from flb.privacy.secret_random import SecretRandom
from flb.types import AdapterState, ClientUpdate
from server.strategy.aggregate import adaptive_update_noise_multiplier, next_clip_norm
from server.strategy.base import Strategy
from server.strategy.dp_fixed_clipping import DPFixedClipping


class DPAdaptiveClipping(DPFixedClipping):
    mechanism = "dp_adaptive_clipping"

    def __init__(self, strategy: Strategy, *, initial_clip_norm: float, noise_multiplier: float,
                 target_quantile: float, learning_rate: float, clipped_count_stddev: float, sample_rate: float,
                 delta: float, random: SecretRandom, lora_a_frozen: bool = False):
        super().__init__(strategy, clip_norm=initial_clip_norm, noise_multiplier=noise_multiplier, random=random,
                         sample_rate=sample_rate, delta=delta, lora_a_frozen=lora_a_frozen)
        if not 0 < target_quantile < 1:
            raise ConfigError(f"server.dp.target_quantile: invalid value {target_quantile!r}; allowed: a number in (0, 1)")
        if learning_rate <= 0:
            raise ConfigError(f"server.dp.clip_learning_rate: invalid value {learning_rate!r}; allowed: a number > 0")
        if clipped_count_stddev < 0:
            raise ConfigError(f"server.dp.clipped_count_stddev: invalid value {clipped_count_stddev!r}; "
                              "allowed: a number >= 0")
        check_adaptive_noise(noise_multiplier, clipped_count_stddev)
        self.target_quantile = target_quantile
        self.learning_rate = learning_rate
        self.clipped_count_stddev = clipped_count_stddev
        self.update_noise_multiplier = adaptive_update_noise_multiplier(noise_multiplier, clipped_count_stddev)

    def aggregate(self, global_adapter: AdapterState, updates: list[ClientUpdate], round: int,
                  num_sampled: int) -> AdapterState:
        unclipped = sum(l2_norm(subtract(u.tensors, global_adapter)) <= self.clip_norm for u in updates)
        aggregated = super().aggregate(global_adapter, updates, round, num_sampled)
        count_noise = self.random.normal_scalar(self.clipped_count_stddev)
        self.clip_norm = next_clip_norm(self.clip_norm, (unclipped + count_noise) / len(updates),
                                        self.target_quantile, self.learning_rate)
        return aggregated

    def privacy_spent(self) -> dict:
        return {**super().privacy_spent(), "update_noise_multiplier": self.update_noise_multiplier,
                "clipped_count_stddev": self.clipped_count_stddev}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "clip_norm": self.clip_norm}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.clip_norm = state.get("clip_norm", self.clip_norm)

