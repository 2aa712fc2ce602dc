"""Strategies by name: one registry dict from `strategy.name` to a builder. Wrappers (norm bounding and the DP
strategies) bound the updates, then aggregate with the strategy `strategy.wraps` names; `--use_server_dp=true`
selects dp_fixed_clipping."""
from __future__ import annotations

from dataclasses import asdict
from typing import Callable

from flb.privacy.accounting import warn_if_delta_too_large
from flb.config import Config
from flb.adapters.lora_aggregation import MEANS
from flb.privacy.secret_random import SecretRandom
from server.strategy.base import Strategy
from server.strategy.dp_adaptive_clipping import DPAdaptiveClipping
from server.strategy.dp_fixed_clipping import DPFixedClipping
from server.strategy.bulyan import Bulyan
from server.strategy.fedadagrad import FedAdagrad
from server.strategy.fedadam import FedAdam
from server.strategy.fedavg import FedAvg
from server.strategy.fedavgm import FedAvgM
from server.strategy.fedprox import FedProx
from server.strategy.fedyogi import FedYogi
from server.strategy.krum import Krum
from server.strategy.median import Median
from server.strategy.multi_krum import MultiKrum
from server.strategy.norm_bounding import NormBounding
from server.strategy.scaffold import Scaffold
from server.strategy.trimmed_mean import TrimmedMean


def _dp_accounting(config: Config, random: SecretRandom) -> dict:
    server = config.server
    warn_if_delta_too_large(server.dp.delta, config.num_clients, "server.dp.delta", "clients")
    # each round samples clients_per_round of num_clients clients: the subsampling rate q of the accounting
    return dict(noise_multiplier=server.noise_multiplier, random=random, delta=server.dp.delta,
                sample_rate=config.clients_per_round / config.num_clients)


def _mean(config: Config):
    """The mean of the clients' adapters strategy.lora_aggregation picks (FedAvg's, and the server optimizers')."""
    return MEANS[config.strategy.lora_aggregation]


def _wrapped(config: Config, random: SecretRandom) -> Strategy:
    return BUILDERS[config.strategy.wraps](config, random)


def _dp_fixed_clipping(config: Config, random: SecretRandom) -> Strategy:
    return DPFixedClipping(_wrapped(config, random), clip_norm=config.server.clip_threshold,
                           lora_a_frozen=config.strategy.lora_a_frozen, **_dp_accounting(config, random))


def _dp_adaptive_clipping(config: Config, random: SecretRandom) -> Strategy:
    dp = config.server.dp
    return DPAdaptiveClipping(_wrapped(config, random), initial_clip_norm=config.server.clip_threshold,
                              target_quantile=dp.target_quantile, learning_rate=dp.clip_learning_rate,
                              clipped_count_stddev=dp.clipped_count_stddev,
                              lora_a_frozen=config.strategy.lora_a_frozen, **_dp_accounting(config, random))


BUILDERS: dict[str, Callable[[Config, SecretRandom], Strategy]] = {
    "fedavg": lambda config, random: FedAvg(mean=_mean(config)),
    "fedprox": lambda config, random: FedProx(mean=_mean(config)),
    "fedavgm": lambda config, random: FedAvgM(**asdict(config.strategy.fedavgm), mean=_mean(config)),
    "fedadagrad": lambda config, random: FedAdagrad(**asdict(config.strategy.fedadagrad), mean=_mean(config)),
    "fedadam": lambda config, random: FedAdam(**asdict(config.strategy.fedadam), mean=_mean(config)),
    "fedyogi": lambda config, random: FedYogi(**asdict(config.strategy.fedyogi), mean=_mean(config)),
    "scaffold": lambda config, random: Scaffold(**asdict(config.strategy.scaffold), num_clients=config.num_clients),
    "median": lambda config, random: Median(),
    "trimmed_mean": lambda config, random: TrimmedMean(**asdict(config.strategy.trimmed_mean)),
    "krum": lambda config, random: Krum(**asdict(config.strategy.krum)),
    "multi_krum": lambda config, random: MultiKrum(**asdict(config.strategy.multi_krum)),
    "bulyan": lambda config, random: Bulyan(**asdict(config.strategy.bulyan)),
    "norm_bounding": lambda config, random: NormBounding(_wrapped(config, random),
                                                         **asdict(config.strategy.norm_bounding)),
    "dp_fixed_clipping": _dp_fixed_clipping,
    "dp_adaptive_clipping": _dp_adaptive_clipping,
}


def build_strategy(config: Config, random: SecretRandom) -> Strategy:
    """The configured strategy; DP strategies draw their noise from `random`, the server's secret generator."""
    return BUILDERS[config.strategy.name](config, random)
