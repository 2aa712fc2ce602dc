"""Contribution of each client to a round, measured on the held-out set (leave-one-out).

points_i = max(0, loss(aggregate without i) - loss(aggregate of all)) in units of 1e-6 eval loss:
a client whose update makes the global adapter better scores more; one that hurts scores 0.
Costs one loss evaluation per client. Without its only client, a round's aggregate is the
previous global adapter. The leave-one-out aggregates are hypothetical: each starts from the strategy's
state before the round, and the state after the round is put back, so they spend no privacy budget and
move no adaptive clipping norm.
"""
from __future__ import annotations

from typing import Callable

from flb.types import AdapterState, ClientUpdate
from server.strategy.base import Strategy

POINTS_PER_LOSS = 1_000_000


def leave_one_out_scores(eval_loss: Callable[[AdapterState], float], strategy: Strategy, state_before: dict,
                         global_adapter: AdapterState, updates: list[ClientUpdate], loss_all: float,
                         round_number: int) -> list[int]:
    """`loss_all` is the eval loss of the round's aggregate of every update; `state_before` is
    `strategy.state_dict()` from before that aggregate."""
    state_after = strategy.state_dict()
    scores = []
    for left_out in range(len(updates)):
        rest = updates[:left_out] + updates[left_out + 1:]
        strategy.load_state_dict(state_before)
        without = strategy.aggregate(global_adapter, rest, round_number, len(rest)) if rest else global_adapter
        scores.append(max(0, round((eval_loss(without) - loss_all) * POINTS_PER_LOSS)))
    strategy.load_state_dict(state_after)
    return scores
