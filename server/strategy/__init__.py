"""Strategies by name. DP wraps any strategy; `--use_server_dp=true` selects dp_fixed_clipping."""
from __future__ import annotations

from flb.config import Config
from server.strategy.base import Strategy
from server.strategy.dp_fixed_clipping import DPFixedClipping
from server.strategy.fedavg import FedAvg


def build_strategy(config: Config) -> Strategy:
    if config.strategy.name == "fedavg":
        return FedAvg()
    if config.strategy.name == "dp_fixed_clipping":
        return DPFixedClipping(FedAvg(), clip_norm=config.server.clip_threshold,
                               noise_multiplier=config.server.noise_multiplier, seed=config.seed)
    raise AssertionError(f"strategy.name {config.strategy.name!r} passed validation but has no builder")
