"""Server-side DP-FedAvg with fixed clipping, as a wrapper around any strategy.

Each update's delta from the global adapter is clipped to C in L2 over the whole adapter; the
clipped updates are aggregated with UNIFORM weights (sigma = z * C / m is calibrated only for an
unweighted mean of m updates); then N(0, sigma^2) is added to every element.
McMahan et al., 2018, https://arxiv.org/abs/1710.06963

Privacy: the unit is one client's whole update (add/remove a client: the sum moves by at most C). Each
round is one subsampled Gaussian step with q = clients_per_round / num_clients and multiplier z, composed
over rounds by opacus' RDP accountant (flb.privacy.accounting). The clients are sampled without replacement, a
fixed number per round, by the server's secret generator; the RDP bound is the one for Poisson sampling
at the same rate, as is usual for DP-FedAvg. That amplification holds only against someone who does not
know who took part: against a reader of the ledger or of metrics.jsonl, each round a client took part in
is a full Gaussian step (q = 1), which `privacy_spent()["known_participants"]` reports for the client
sampled most often. The noise comes from the server's secret generator (flb.privacy.secret_random).
"""

from __future__ import annotations

import dataclasses
import logging

from flb.adapters.arithmetic import add, add_gaussian_noise_inplace, clip_inplace, subtract
from flb.adapters.lora_aggregation import trained_part
from flb.config import ServerSettings
from flb.privacy.accounting import Accounted, epsilon, rdp_accountant, warn_if_delta_too_large
from flb.privacy.secret_random import SecretRandom
from flb.types import AdapterState, ClientUpdate
from server.strategy.aggregate import dp_fedavg_noise_std
from server.strategy.base import BuildContext, Strategy

log = logging.getLogger(__name__)


class DPFixedClipping(Accounted, Strategy):
    mechanism = "dp_fixed_clipping"

    def __init__(
        self,
        strategy: Strategy,
        settings: ServerSettings,
        *,
        sample_rate: float,
        random: SecretRandom,
        lora_a_frozen: bool = False,
    ):
        """`strategy`: one whose output is a mean of the updates (flb.config refuses others: the noise is calibrated
        for a mean); `sample_rate`: q, the fraction of the clients sampled each round."""
        self.strategy = strategy
        self.clip_norm = settings.clip_threshold
        self.noise_multiplier = settings.noise_multiplier
        self.update_noise_multiplier = self.noise_multiplier  # the noise on the aggregate; adaptive clipping takes less
        self.sample_rate = sample_rate
        self.delta = settings.dp.delta
        self.random = random
        self.lora_a_frozen = lora_a_frozen
        self.accountant = rdp_accountant()
        self.participations: dict[str, int] = {}
        self.last_noise_std = 0.0

    def aggregate(
        self, global_adapter: AdapterState, updates: list[ClientUpdate], round: int, num_sampled: int
    ) -> AdapterState:
        if len(updates) < num_sampled:
            log.warning(
                "round %d: %d of %d sampled clients returned valid updates; noise is calibrated for the %d that did",
                round,
                len(updates),
                num_sampled,
                len(updates),
            )
        clipped = [self._clipped(global_adapter, update) for update in updates]
        aggregated = self.strategy.aggregate(global_adapter, clipped, round, num_sampled)
        self.last_noise_std = dp_fedavg_noise_std(self.update_noise_multiplier, self.clip_norm, len(updates))
        # under ffa the clipped updates carry the global A (`_clipped`), so the aggregate's A holds no client's
        # data: released without noise it costs no privacy, and A stays frozen
        add_gaussian_noise_inplace(trained_part(aggregated, self.lora_a_frozen), self.last_noise_std, self.random)
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        for update in updates:
            self.participations[str(update.client_id)] = self.participations.get(str(update.client_id), 0) + 1
        return aggregated

    def client_extras(self, global_adapter: AdapterState) -> AdapterState:
        return self.strategy.client_extras(global_adapter)

    def mean_weights(self, updates: list[ClientUpdate]) -> list[float]:
        return [1.0] * len(updates)

    def privacy_spent(self) -> dict:
        return {**super().privacy_spent(), "known_participants": self.known_participants_spent()}

    def known_participants_spent(self) -> dict:
        """Epsilon against someone who knows who took part: q = 1 over the rounds of the most-sampled client."""
        most = max(self.participations.values(), default=0)
        history = [[self.noise_multiplier, 1.0, most]] if most else []
        return {
            "epsilon": epsilon(rdp_accountant({"history": history}), self.delta),
            "sample_rate": 1.0,
            "steps": most,
            "history": history,
        }

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "participations": dict(self.participations),
            "inner": self.strategy.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.participations = dict(state.get("participations", {}))
        self.strategy.load_state_dict(state.get("inner", {}))

    def _clipped(self, global_adapter: AdapterState, update: ClientUpdate) -> ClientUpdate:
        delta = trained_part(subtract(update.tensors, global_adapter), self.lora_a_frozen)
        clip_inplace(delta, self.clip_norm)
        return dataclasses.replace(update, tensors={**global_adapter, **add(delta, global_adapter)}, num_examples=1)


def build(context: BuildContext) -> DPFixedClipping:
    return DPFixedClipping(context.inner, context.config.server, **wrapper_arguments(context))


def wrapper_arguments(context: BuildContext) -> dict:
    """What a DP wrapper takes besides the server settings; warns when server.dp.delta is weak for the clients."""
    config = context.config
    warn_if_delta_too_large(config.server.dp.delta, config.num_clients, "server.dp.delta", "clients")
    # each round samples clients_per_round of num_clients clients: the subsampling rate q of the accounting
    return dict(
        sample_rate=config.clients_per_round / config.num_clients,
        random=context.random,
        lora_a_frozen=config.strategy.lora_a_frozen,
    )
