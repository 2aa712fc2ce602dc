"""Contribution of each client to a round, measured on the held-out set (leave-one-out).

points_i = max(0, loss(aggregate without i) - loss(aggregate of all)) in units of 1e-6 eval loss:
a client whose update makes the global adapter better scores more; one that hurts scores 0.
Costs one loss evaluation per client. Without its only client, a round's aggregate is the
previous global adapter. The leave-one-out aggregates are hypothetical: each starts from the strategy's
state before the round, and the state after the round is put back, so they spend no privacy budget and
move no adaptive clipping norm.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from flb.types import AdapterState, ClientUpdate
from server.strategy.base import Strategy

POINTS_PER_LOSS = 1_000_000


def leave_one_out_scores(
    eval_loss: Callable[[AdapterState], float],
    strategy: Strategy,
    state_before: dict,
    global_adapter: AdapterState,
    updates: list[ClientUpdate],
    loss_all: float,
    round_number: int,
) -> tuple[list[int], dict[int, str]]:
    """`loss_all` is the eval loss of the round's aggregate of every update; `state_before` is
    `strategy.state_dict()` from before that aggregate. Returns the scores and, for each client scored 0 because
    a loss was not a finite number, why."""
    state_after = strategy.state_dict()
    scores, unscored = [], {}
    for left_out, update in enumerate(updates):
        rest = updates[:left_out] + updates[left_out + 1 :]
        strategy.load_state_dict(state_before)
        without = strategy.aggregate(global_adapter, rest, round_number, len(rest)) if rest else global_adapter
        loss_without = eval_loss(without)
        if math.isfinite(loss_without) and math.isfinite(loss_all):
            scores.append(max(0, round((loss_without - loss_all) * POINTS_PER_LOSS)))
        else:
            scores.append(0)
            unscored[update.client_id] = (
                f"eval loss {loss_all:g} with it and {loss_without:g} without it is not finite; scored 0"
            )
    strategy.load_state_dict(state_after)
    return scores, unscored
