"""Strategies by name. DP wraps any strategy; `--use_server_dp=true` selects dp_fixed_clipping."""
from __future__ import annotations

from flb.accounting import warn_if_delta_too_large
from flb.config import Config
from flb.secret_random import SecretRandom
from server.strategy.base import Strategy
from server.strategy.dp_adaptive_clipping import DPAdaptiveClipping
from server.strategy.dp_fixed_clipping import DPFixedClipping
from server.strategy.fedavg import FedAvg


def build_strategy(config: Config, random: SecretRandom) -> Strategy:
    """The configured strategy; DP strategies draw their noise from `random`, the server's secret generator."""
    if config.strategy.name == "fedavg":
        return FedAvg()
    server = config.server
    # each round samples clients_per_round of num_clients clients: the subsampling rate q of the accounting
    accounting = dict(noise_multiplier=server.noise_multiplier, random=random, delta=server.dp.delta,
                      sample_rate=config.clients_per_round / config.num_clients)
    warn_if_delta_too_large(server.dp.delta, config.num_clients, "server.dp.delta", "clients")
    if config.strategy.name == "dp_fixed_clipping":
        return DPFixedClipping(FedAvg(), clip_norm=server.clip_threshold, **accounting)
    if config.strategy.name == "dp_adaptive_clipping":
        return DPAdaptiveClipping(FedAvg(), initial_clip_norm=server.clip_threshold,
                                  target_quantile=server.dp.target_quantile, learning_rate=server.dp.clip_learning_rate,
                                  clipped_count_stddev=server.dp.clipped_count_stddev, **accounting)
    raise AssertionError(f"strategy.name {config.strategy.name!r} passed validation but has no builder")
