"""The client's privacy hook: what leaves the client passes through here, and its accountant lives here.

`NoPrivacy` sends the adapter as is. `GaussianUpdate` is local DP on the update; `client.dpsgd.DPSGD`
is sample-level DP in training. Each keeps an opacus accountant for the whole run, so its epsilon
is cumulative, and hands its state to the checkpoint so a resumed run continues it.
"""
from __future__ import annotations

from typing import Protocol

from flb.accounting import Accounted, noise_multiplier_for, rdp_accountant, warn_if_delta_too_large
from flb.adapter_math import add, add_gaussian_noise_inplace, clip_inplace, subtract
from flb.config import ClientDPSettings, ClientSettings
from flb.seeding import derived_seed
from flb.types import AdapterState

_NOISE_STREAM = 0x1D


class UpdatePrivacy(Protocol):
    def privatize(self, local: AdapterState, global_adapter: AdapterState, round: int) -> AdapterState:
        """The adapter to send after training `local` from `global_adapter`."""

    def privacy_spent(self) -> dict:
        """Epsilon so far and how it is computed (flb.accounting.spent); {} without DP."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class NoPrivacy:
    def privatize(self, local: AdapterState, global_adapter: AdapterState, round: int) -> AdapterState:
        return local

    def privacy_spent(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class GaussianUpdate(Accounted):
    """Local DP on what leaves the client: the update delta = local - global is clipped to C in L2 over the
    whole adapter and N(0, (z C)^2) is added to every element; the clipped, noised delta is what is sent.
    Each participation is one Gaussian mechanism on the client's whole shard (sample rate 1), composed over
    the rounds the client takes part in (McMahan et al., 2018, https://arxiv.org/abs/1710.06963)."""

    mechanism = "local_update"
    sample_rate = 1.0

    def __init__(self, *, clip_norm: float, noise_multiplier: float, delta: float, seed: int, client_id: int):
        self.clip_norm, self.noise_multiplier, self.delta = clip_norm, noise_multiplier, delta
        self.seed, self.client_id = seed, client_id
        self.accountant = rdp_accountant()

    def privatize(self, local: AdapterState, global_adapter: AdapterState, round: int) -> AdapterState:
        import torch

        delta = subtract(local, global_adapter)
        clip_inplace(delta, self.clip_norm)
        generator = torch.Generator().manual_seed(derived_seed(self.seed, round, self.client_id, _NOISE_STREAM))
        add_gaussian_noise_inplace(delta, self.noise_multiplier * self.clip_norm, generator)
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        return add(global_adapter, delta)



def local_privacy(settings: ClientSettings, *, num_examples: int, batch_size: int, learning_rate: float,
                  local_steps: int, num_rounds: int, seed: int, client_id: int) -> UpdatePrivacy:
    """The privacy hook `client.local_dp` and `client.dp` ask for, for one client with `num_examples` records.

    A z derived from client.dp.target_epsilon is planned for the worst case, the client taking part in all
    `num_rounds` rounds, so its epsilon never exceeds the target whichever rounds sample it.
    """
    if not settings.local_dp:
        return NoPrivacy()
    dp = settings.dp
    warn_if_delta_too_large(dp.delta, num_examples, "client.dp.delta", f"client {client_id}'s examples")
    if dp.mode == "update":
        return GaussianUpdate(clip_norm=dp.clip_norm, noise_multiplier=_noise_multiplier(dp, 1.0, num_rounds),
                              delta=dp.delta, seed=seed, client_id=client_id)
    from client.dpsgd import DPSGD

    sample_rate = min(1.0, batch_size / num_examples)
    return DPSGD(clip_norm=dp.clip_norm, noise_multiplier=_noise_multiplier(dp, sample_rate, num_rounds * local_steps),
                 delta=dp.delta, sample_rate=sample_rate, learning_rate=learning_rate,
                 local_steps=local_steps, seed=seed, client_id=client_id)


def _noise_multiplier(dp: ClientDPSettings, sample_rate: float, steps: int) -> float:
    if dp.noise_multiplier is not None:
        return dp.noise_multiplier
    return noise_multiplier_for(target_epsilon=dp.target_epsilon, delta=dp.delta, sample_rate=sample_rate, steps=steps,
                                key="client.dp.target_epsilon")
