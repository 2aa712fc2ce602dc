"""A client of its own LoRA rank (model.lora.client_ranks; flb.adapters.ranks says why it trains exactly a rank-k
adapter inside the global rank-r one), and HetLoRA's rank self-pruning under strategy.lora_aggregation hetlora.

Self-pruning (after Cho et al., 2024, https://arxiv.org/abs/2401.06432, with a decay in place of their norm
penalty): while it trains, a client adds tail_decay * theta to the gradients of its top components (the last
prune_fraction of its active rank, at least one), so components it does not need shrink; after its local steps, if
they carry less than prune_below of its adapter's change (||B_tail A_tail|| against ||B A||, Frobenius over every LoRA
module), it sets them to zero, and they stay zero in every later round (its active rank is part of its private
state). It still sends its configured rank's shapes, the pruned components as zeros.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from flb.adapters.lora_aggregation import is_lora_a, lora_modules
from flb.adapters.ranks import at_rank, is_lora_b, with_zero_tail
from flb.config import HetLoRASettings
from flb.types import AdapterState

log = logging.getLogger(__name__)


@dataclass
class ClientRank:
    client_id: int
    rank: int  # its configured rank: the shapes it sends
    pruning: HetLoRASettings | None = None  # hetlora's self-pruning; None: none (flexlora)
    active: int = 0  # the components it still trains (rank, less what it pruned); 0: its configured rank

    def __post_init__(self):
        self.active = self.active or self.rank

    def start(self, global_adapter: AdapterState) -> AdapterState:
        """Where its round starts: the global adapter with every component from its active rank on set to zero."""
        return with_zero_tail(global_adapter, self.active)

    def decay(self, parameters: dict) -> TailDecay | None:
        """The round's decay of its top components (`parameters`: the trainable adapter parameters), or None."""
        tail = self._tail()
        if not tail or not self.pruning.tail_decay:
            return None
        return TailDecay(parameters, tail, self.pruning.tail_decay)

    def sent(self, trained: AdapterState, start: AdapterState) -> tuple[AdapterState, AdapterState]:
        """(what it sends: `trained` at its rank, its top components pruned if they carry too little; the start
        at its rank, which its update is measured from)."""
        tail = self._tail()
        if tail and (share := tail_share(trained, tail)) < self.pruning.prune_below:
            log.info(
                "client %d: rank %d -> %d, its top components carried %.3f of its B A (prune_below %g)",
                self.client_id,
                self.active,
                tail.start,
                share,
                self.pruning.prune_below,
            )
            self.active = tail.start
            trained = with_zero_tail(trained, self.active)
        return at_rank(trained, self.rank), at_rank(start, self.rank)

    def _tail(self) -> range:
        """The components it decays and may prune: none without pruning or at rank 1."""
        if self.pruning is None or not self.pruning.prune_fraction or self.active == 1:
            return range(0)
        size = min(self.active - 1, max(1, math.floor(self.pruning.prune_fraction * self.active)))
        return range(self.active - size, self.active)


def tail_share(state: AdapterState, tail: range) -> float:
    """||sum over `tail` of B_i A_i|| / ||B A||, Frobenius over every LoRA module together; 0 for a zero adapter."""
    part = whole = 0.0
    for a_name, b_name in lora_modules(state):
        a, b = state[a_name].double(), state[b_name].double()
        part += float((b[:, tail.start : tail.stop] @ a[tail.start : tail.stop]).square().sum())
        whole += float((b @ a).square().sum())
    return math.sqrt(part / whole) if whole else 0.0


class TailDecay:
    """Adds lambda * theta to the gradients of components `tail` of every LoRA factor, before each optimizer step."""

    def __init__(self, parameters: dict, tail: range, decay: float):
        self.factors = [(p, 0 if is_lora_a(n) else 1) for n, p in parameters.items() if is_lora_a(n) or is_lora_b(n)]
        self.tail, self.decay = slice(tail.start, tail.stop), decay

    def apply(self) -> None:
        import torch

        with torch.no_grad():
            for parameter, axis in self.factors:
                if parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)
                index = (self.tail,) if axis == 0 else (slice(None), self.tail)
                parameter.grad[index].add_(parameter[index], alpha=self.decay)


@dataclass
class Corrections:
    """Several gradient corrections run one after another before each optimizer step."""

    parts: list

    def apply(self) -> None:
        for part in self.parts:
            part.apply()


def combined(*corrections) -> object | None:
    """The corrections that are not None, as one; None when there are none."""
    present = [c for c in corrections if c is not None]
    return None if not present else present[0] if len(present) == 1 else Corrections(present)
