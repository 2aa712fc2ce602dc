"""Simulated stragglers and dropouts (simulation.*), to study them on one machine: a client slower than the machine
it trains on, and sampled clients that do not answer a round. Their randomness comes from simulation.seed, public
and deciding nothing about privacy (who is sampled stays the server's draw), so a run repeats it, resumed or not."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from flb.config import SimulationSettings
from flb.errors import ClientUnavailable
from flb.seeding import derived_seed
from flb.types import AdapterState, Client, ClientUpdate, FitAll, RoundDeadline

_SPEED_STREAM, _DROPOUT_STREAM = 0x51, 0x52


def slowdown(settings: SimulationSettings, client_id: int) -> float:
    """Client `client_id`'s factor: its simulation.client_speed entry (cycled; 1 without), times a log-normal draw
    of simulation.speed_spread, never below 1."""
    import numpy as np

    speeds = settings.client_speed or [1.0]
    factor = speeds[client_id % len(speeds)]
    if settings.speed_spread > 0:
        draw = np.random.default_rng(derived_seed(settings.seed, client_id, _SPEED_STREAM)).standard_normal()
        factor *= math.exp(settings.speed_spread * draw)
    return max(1.0, factor)


def wait_out(factor: float, trained_s: float) -> None:
    """What makes a client `factor` times slower: after `trained_s` of training, wait (factor - 1) times as long."""
    if factor > 1:
        time.sleep((factor - 1) * trained_s)


def drops_out(settings: SimulationSettings, round: int, client_id: int) -> bool:
    """Whether client `client_id` drops out of `round`: with probability simulation.dropout, drawn from
    (simulation.seed, round, client) alone."""
    import numpy as np

    if settings.dropout == 0:
        return False
    draw = np.random.default_rng(derived_seed(settings.seed, round, client_id, _DROPOUT_STREAM)).random()
    return bool(draw < settings.dropout)


def dropout(settings: SimulationSettings, round: int, client_id: int) -> ClientUnavailable | None:
    """ClientUnavailable for a client that drops out of `round` (drops_out), else None."""
    if not drops_out(settings, round, client_id):
        return None
    return ClientUnavailable(
        f"client {client_id}: dropped out of round {round} (simulation.dropout = {settings.dropout:g})"
    )


def with_dropouts(fit_all: FitAll, settings: SimulationSettings) -> FitAll:
    """`fit_all` (flb.types.FitAll) for the sampled clients that do not drop out of the round; each one that
    does is ClientUnavailable, as an unreachable node is (the round goes on without it)."""
    if settings.dropout == 0:
        return fit_all

    def fit_those_present(
        clients: Sequence[Client],
        global_adapter: AdapterState,
        round: int,
        extras: AdapterState,
        deadline: RoundDeadline | None = None,
    ) -> list[ClientUpdate | Exception]:
        absent = {c.client_id: error for c in clients if (error := dropout(settings, round, c.client_id))}
        present = [c for c in clients if c.client_id not in absent]
        answers = iter(fit_all(present, global_adapter, round, extras, deadline) if present else [])
        return [absent[c.client_id] if c.client_id in absent else next(answers) for c in clients]

    return fit_those_present
