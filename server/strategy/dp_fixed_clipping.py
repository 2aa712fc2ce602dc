"""Server-side DP-FedAvg with fixed clipping, as a wrapper around any strategy.

Each update's delta from the global adapter is clipped to C in L2 over the whole adapter; the
clipped updates are aggregated with UNIFORM weights (sigma = z * C / m is calibrated only for an
unweighted mean of m updates); then N(0, sigma^2) is added to every element.
McMahan et al., 2018, https://arxiv.org/abs/1710.06963

Privacy: each round is one subsampled Gaussian step with q = clients_per_round / num_clients and
multiplier z, composed over rounds by opacus' RDP accountant (flb.accounting). The clients are sampled
without replacement, a fixed number per round; the RDP bound is the one for Poisson sampling at the
same rate, as is usual for DP-FedAvg.
"""
from __future__ import annotations

import dataclasses
import logging

import torch

from flb.accounting import Accounted, rdp_accountant
from flb.adapter_math import add, add_gaussian_noise_inplace, clip_inplace, subtract
from flb.errors import ConfigError
from flb.seeding import derived_seed
from flb.types import AdapterState, ClientUpdate
from server.strategy.aggregate import dp_fedavg_noise_std
from server.strategy.base import Strategy

log = logging.getLogger(__name__)
_NOISE_STREAM = 0xD9


class DPFixedClipping(Accounted, Strategy):
    mechanism = "dp_fixed_clipping"

    def __init__(self, strategy: Strategy, *, clip_norm: float, noise_multiplier: float, sample_rate: float,
                 delta: float, seed: int):
        if clip_norm <= 0:
            raise ConfigError(f"server.clip_threshold: invalid value {clip_norm!r}; allowed: a number > 0")
        if noise_multiplier < 0:
            raise ConfigError(f"server.noise_multiplier: invalid value {noise_multiplier!r}; allowed: a number >= 0")
        if not 0 < sample_rate <= 1:
            raise ConfigError(f"clients_per_round / num_clients: invalid value {sample_rate!r}; allowed: a number "
                              "in (0, 1]")
        if not 0 < delta < 1:
            raise ConfigError(f"server.dp.delta: invalid value {delta!r}; allowed: a number in (0, 1)")
        self.strategy = strategy
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self.update_noise_multiplier = noise_multiplier  # the noise on the aggregate; adaptive clipping takes less
        self.sample_rate = sample_rate
        self.delta = delta
        self.seed = seed
        self.accountant = rdp_accountant()
        self.last_noise_std = 0.0

    def aggregate(self, global_adapter: AdapterState, updates: list[ClientUpdate], round: int,
                  num_sampled: int) -> AdapterState:
        if len(updates) < num_sampled:
            log.warning("round %d: %d of %d sampled clients returned valid updates; noise is calibrated for the "
                        "%d that did", round, len(updates), num_sampled, len(updates))
        clipped = [self._clipped(global_adapter, update) for update in updates]
        aggregated = self.strategy.aggregate(global_adapter, clipped, round, num_sampled)
        self.last_noise_std = dp_fedavg_noise_std(self.update_noise_multiplier, self.clip_norm, len(updates))
        generator = torch.Generator().manual_seed(derived_seed(self.seed, round, _NOISE_STREAM))
        add_gaussian_noise_inplace(aggregated, self.last_noise_std, generator)
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        return aggregated

    def _clipped(self, global_adapter: AdapterState, update: ClientUpdate) -> ClientUpdate:
        delta = subtract(update.tensors, global_adapter)
        clip_inplace(delta, self.clip_norm)
        return dataclasses.replace(update, tensors=add(global_adapter, delta), num_examples=1)

