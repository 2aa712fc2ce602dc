"""A client's personal adapter (strategy.personalization; docs/strategies.md#personal-adapters) and the records it
holds out of its own shard to judge it. SFTClient calls it at four points of a round: where training starts, once the
global adapter is trained, for the update's commitment, and for what the update sends.

- fedsa (FedSA-LoRA, Guo et al., 2025, https://arxiv.org/abs/2410.01463): the personal part is the client's LoRA B.
  Each round it trains from (global A, its own B); its update sends A only (flb.personalization.shared_part).
- ditto (Li et al., 2021, https://arxiv.org/abs/2012.04221, Algorithm 1): the client trains the global adapter as
  without personalization and sends it; then, for as many local steps, its personal adapter v_k (last round's, the
  first time the global one) with the proximal term lambda/2 ||v_k - w_global||^2, whose exact gradient
  lambda (v_k - w_global) is FedProx's (flb.local_objective.GradientCorrection). The personal part is v_k.

The personal part lives in the client's private state (saved with its round, restored by a resumed run). What leaves
the client is a salted commitment to it, in its signed update, and its held-out losses and exact-match accuracies: the
global adapter's it received this round and its personal adapter's after this round's training, each the newest it
holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from client.signing import salted_commitment
from flb.audit.digests import adapter_digest
from flb.errors import DataError
from flb.local_objective import GradientCorrection
from flb.model.generation import exact_matches
from flb.model.load import adapter_parameters, get_adapter_state, set_adapter_state
from flb.personalization import COMMITMENT, commitment_tensor, private_part, shared_part
from flb.types import AdapterState

PERSONAL_PREFIX = "personal/"  # the personal part's tensors in the private state; no adapter tensor name starts with it


def split_shard(shard: list[dict], client_id: int, held_out: int) -> tuple[list[dict], list[dict]]:
    """(the records a client trains on, the last `held_out` of its shard, which it only evaluates on)."""
    if len(shard) <= held_out:
        raise DataError(
            f"client {client_id}: its shard has {len(shard)} records and eval.personal_size holds out {held_out}, "
            "leaving none to train on; lower eval.personal_size or give the clients more data"
        )
    return shard[:-held_out], shard[-held_out:]


@dataclass
class PersonalAdapter:
    """One client's personal part and its held-out records, which never leave it."""

    personalization: str  # fedsa | ditto
    lam: float  # ditto's lambda
    held_out: list[dict]
    max_new_tokens: int  # eval.max_new_tokens: the exact-match answers on the held-out records
    part: AdapterState = field(default_factory=dict)  # fedsa: its LoRA B; ditto: v_k; {} before its first round
    losses: dict = field(default_factory=dict)  # this round's own-split losses, reported with the update
    _rows: object = field(default=None, repr=False)  # the held-out records tokenized, at their first evaluation

    def start(self, model, global_adapter: AdapterState) -> AdapterState:
        """Where this round's training starts, set in `model`: fedsa's global A with the client's own B (from its
        second round), otherwise the global adapter (already in the model)."""
        if self.personalization != "fedsa" or not self.part:
            return global_adapter
        start = {**global_adapter, **self.part}
        set_adapter_state(model, start)
        return start

    def after_training(
        self, model, trainers, client_id: int, trained: AdapterState, global_adapter: AdapterState, seed: int
    ) -> None:
        """Once the round's global training is done (`trained` its result): the new personal part (ditto trains it
        now on `trainers`, the client's trainer, seeded with `seed`), then the held-out losses of the global and the
        personal adapter."""
        from transformers import set_seed

        if self.personalization == "ditto":
            set_adapter_state(model, self.part or global_adapter)
            set_seed(seed)
            proximal = GradientCorrection(adapter_parameters(model), mu=self.lam, anchor=global_adapter, drift=None)
            trainers.train(proximal)
            personal = self.part = get_adapter_state(model)
        else:
            personal, self.part = trained, private_part(trained, self.personalization)
        if self._rows is None:
            self._rows = trainers.tokenize(client_id, self.held_out)
        self.losses = {"held_out": len(self.held_out)}
        for name, adapter in (("global", global_adapter), ("personal", personal)):
            self.losses[f"{name}_loss"] = trainers.eval_loss(adapter, self._rows)  # puts `adapter` in the model
            if "prompt" in self.held_out[0]:  # prompt-completion records: their answers can be matched
                self.losses[f"{name}_accuracy"] = self._accuracy(model, trainers.trainer.processing_class)

    def _accuracy(self, model, tokenizer) -> float:
        """The share of the held-out records whose answer greedy decoding with the model's adapter gives exactly."""
        matches = exact_matches(
            model,
            tokenizer,
            self.held_out,
            max_new_tokens=self.max_new_tokens,
            batch_size=8,
            answer="completion",
            label="own exact_match",
        )
        return sum(matches) / len(matches)

    def commitment(self, random, private, round: int) -> AdapterState:
        """The update's extra: sha256(salt || digest of the personal part), the salt drawn from the client's secret
        generator `random`, the opening kept in its private state `private` (as for its data upload's)."""
        committed = salted_commitment(adapter_digest(self.part), random, private, f"round {round} personal adapter")
        return {COMMITMENT: commitment_tensor(committed)}

    def sent(self, trained: AdapterState) -> AdapterState:
        """What of the trained adapter the update sends: fedsa's LoRA B stays here."""
        return shared_part(trained, self.personalization)

    def private_tensors(self) -> AdapterState:
        return {PERSONAL_PREFIX + name: t for name, t in self.part.items()}

    def restore(self, tensors: AdapterState) -> None:
        """The personal part from the private state's tensors (private_tensors' names)."""
        self.part = {n.removeprefix(PERSONAL_PREFIX): t for n, t in tensors.items() if n.startswith(PERSONAL_PREFIX)}


def personal_adapter(config, held_out: list[dict]) -> PersonalAdapter | None:
    """A client's PersonalAdapter under the run's config, or None without personalization."""
    strategy = config.strategy
    if strategy.personalization == "none":
        return None
    return PersonalAdapter(strategy.personalization, strategy.ditto.lam, held_out, config.eval.max_new_tokens)
