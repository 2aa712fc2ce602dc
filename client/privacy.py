"""The client's privacy hook: what leaves the client passes through here, and its accountant lives here.

`NoPrivacy` sends the adapter as is. `GaussianUpdate` is local DP on the update; `client.dpsgd.DPSGD`
is sample-level DP in training. Each keeps an opacus accountant for the whole run, so its epsilon
is cumulative, and hands its state to the client's private state (never to the server), so a resumed
run continues it. Their noise comes from the client's secret generator (flb.privacy.secret_random).
"""

from __future__ import annotations

from typing import Protocol

from flb.adapters.arithmetic import add, add_gaussian_noise_inplace, clip_inplace, subtract
from flb.adapters.lora_aggregation import trained_part
from flb.config import ClientDPSettings, ClientSettings
from flb.privacy.accounting import NoisePlan, PlannedNoise, warn_if_delta_too_large
from flb.privacy.secret_random import SecretRandom
from flb.types import AdapterState


class UpdatePrivacy(Protocol):
    def privatize(self, local: AdapterState, global_adapter: AdapterState, random: SecretRandom) -> AdapterState:
        """The adapter to send after training `local` from `global_adapter`; noise comes from the client's
        secret generator."""

    def privacy_spent(self) -> dict:
        """Epsilon so far and how it is computed (flb.privacy.accounting.spent); {} without DP."""

    def state_dict(self) -> dict: ...

    def restore(self, state: dict, rounds_done: int) -> None:
        """Continue from `state_dict()` output saved after the client's round `rounds_done`."""


class NoPrivacy:
    def privatize(self, local: AdapterState, global_adapter: AdapterState, random: SecretRandom) -> AdapterState:
        return local

    def privacy_spent(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def restore(self, state: dict, rounds_done: int) -> None:
        pass


class GaussianUpdate(PlannedNoise):
    """Local DP on what leaves the client: the update delta = local - global is clipped to C in L2 over the
    whole adapter and N(0, (z C)^2) is added to every element; the clipped, noised delta is what is sent.
    Each participation is one Gaussian mechanism on the client's whole shard (sample rate 1), composed over
    the rounds the client takes part in (McMahan et al., 2018, https://arxiv.org/abs/1710.06963). Under
    add/remove adjacency (the shard against no shard) the delta moves by at most C; under replace (the shard
    against any other) by 2C.

    Under ffa (`lora_a_frozen`) LoRA A is sent as the global adapter's: a value the client was given, which
    carries none of its data, so the mechanism on the trained tensors alone keeps the same guarantee; noise on A
    would only unfreeze it and lose ffa's exact aggregation."""

    mechanism = "local_update"
    sample_rate = 1.0

    def __init__(
        self,
        *,
        clip_norm: float,
        delta: float,
        plan: NoisePlan,
        adjacency: str = "add_remove",
        lora_a_frozen: bool = False,
    ):
        self.clip_norm, self.delta, self.lora_a_frozen = clip_norm, delta, lora_a_frozen
        super().__init__(plan, adjacency=adjacency)

    def privatize(self, local: AdapterState, global_adapter: AdapterState, random: SecretRandom) -> AdapterState:
        delta = trained_part(subtract(local, global_adapter), self.lora_a_frozen)
        clip_inplace(delta, self.clip_norm)
        add_gaussian_noise_inplace(delta, self.noise_multiplier * self.clip_norm, random)
        self.accountant.step(noise_multiplier=self.accounting_multiplier, sample_rate=self.sample_rate)
        return {**global_adapter, **add(delta, global_adapter)}


def local_privacy(
    settings: ClientSettings,
    *,
    num_examples: int,
    batch_size: int,
    local_steps: int,
    num_rounds: int,
    client_id: int,
    lora_a_frozen: bool = False,
) -> UpdatePrivacy:
    """The privacy hook `client.local_dp` and `client.dp` ask for, for one client with `num_examples` records.

    A z derived from client.dp.target_epsilon is planned for the worst case, the client taking part in all
    `num_rounds` rounds, so its epsilon never exceeds the target whichever rounds sample it.
    """
    if not settings.local_dp:
        return NoPrivacy()
    dp = settings.dp
    warn_if_delta_too_large(dp.delta, num_examples, "client.dp.delta", f"client {client_id}'s examples")
    if dp.mode == "update":
        return GaussianUpdate(
            clip_norm=dp.clip_norm,
            delta=dp.delta,
            adjacency=dp.adjacency,
            plan=_plan(dp, num_rounds, 1, client_id),
            lora_a_frozen=lora_a_frozen,
        )
    from client.dpsgd import DPSGD

    return DPSGD(
        clip_norm=dp.clip_norm,
        delta=dp.delta,
        sample_rate=min(1.0, batch_size / num_examples),
        local_steps=local_steps,
        plan=_plan(dp, num_rounds, local_steps, client_id),
    )


def _plan(dp: ClientDPSettings, num_rounds: int, steps_per_round: int, client_id: int) -> NoisePlan:
    return NoisePlan(
        noise_multiplier=dp.noise_multiplier,
        target_epsilon=dp.target_epsilon,
        num_rounds=num_rounds,
        steps_per_round=steps_per_round,
        allow_over_target=dp.allow_over_target,
        owner=f"client {client_id}",
    )
