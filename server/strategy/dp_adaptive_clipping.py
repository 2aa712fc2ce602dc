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
from flb.config import ServerSettings
from flb.types import AdapterState, ClientUpdate
from server.strategy.aggregate import adaptive_update_noise_multiplier, next_clip_norm
from server.strategy.base import BuildContext, Strategy
from server.strategy.dp_fixed_clipping import DPFixedClipping, wrapper_arguments


class DPAdaptiveClipping(DPFixedClipping):
    mechanism = "dp_adaptive_clipping"

    def __init__(self, strategy: Strategy, settings: ServerSettings, **wrapper):
        """As DPFixedClipping's (`wrapper`: its keyword arguments); C starts at server.clip_threshold, server.dp
        gives gamma, eta and sigma_b."""
        super().__init__(strategy, settings, **wrapper)
        self.target_quantile = settings.dp.target_quantile
        self.learning_rate = settings.dp.clip_learning_rate
        self.clipped_count_stddev = settings.dp.clipped_count_stddev
        self.update_noise_multiplier = adaptive_update_noise_multiplier(
            self.noise_multiplier, self.clipped_count_stddev
        )

    def aggregate(
        self, global_adapter: AdapterState, updates: list[ClientUpdate], round: int, num_sampled: int
    ) -> AdapterState:
        unclipped = sum(l2_norm(subtract(u.tensors, global_adapter)) <= self.clip_norm for u in updates)
        aggregated = super().aggregate(global_adapter, updates, round, num_sampled)
        count_noise = self.random.normal_scalar(self.clipped_count_stddev)
        self.clip_norm = next_clip_norm(
            self.clip_norm, (unclipped + count_noise) / len(updates), self.target_quantile, self.learning_rate
        )
        return aggregated

    def privacy_spent(self) -> dict:
        return {
            **super().privacy_spent(),
            "update_noise_multiplier": self.update_noise_multiplier,
            "clipped_count_stddev": self.clipped_count_stddev,
        }

    def state_dict(self) -> dict:
        return {**super().state_dict(), "clip_norm": self.clip_norm}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.clip_norm = state.get("clip_norm", self.clip_norm)


def build(context: BuildContext) -> DPAdaptiveClipping:
    return DPAdaptiveClipping(context.inner, context.config.server, **wrapper_arguments(context))
