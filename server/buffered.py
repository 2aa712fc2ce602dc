"""When strategy fedbuff's clients start and arrive (Nguyen et al., 2022, https://arxiv.org/abs/2106.06639).

clients_per_round clients train at once, each from the newest global adapter when it starts; a round is the next
strategy.fedbuff.buffer_size arrivals. Arrivals are ordered on a clock of the run's own: a client's job takes its
simulation.client_speed slowdown (1 without one) in clock units, ties going to the lower client id. The clock, not
the wall clock, decides which update lands in which round, so a run is the same in process or in worker processes,
resumed or not (the workers do train at once, and a slow one in wall time is slow on the clock too); what the clock
cannot see is a client slower than configured, which the round then waits for.

A client whose update waits in the buffer is not started again before the round is aggregated, so each of its
updates starts from a later round than its last (the contract requires it: one signed update, one round).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from flb.config import FedBuffSettings
from flb.errors import ClientLate
from flb.types import AdapterState, Client, ClientUpdate, Jobs

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One client training from the global adapter of `start_round` (so signing round start_round + 1), done at
    `finish` on the clock; `absent` when it will never answer (simulation.dropout)."""

    client_id: int
    start_round: int
    finish: float
    absent: bool = False


@dataclass
class BufferedSchedule:
    """The clock and the jobs on it; its state goes in the run's checkpoint."""

    concurrency: int  # clients_per_round
    duration: Callable[[int], float]  # client id -> the clock units its job takes
    now: float = 0.0
    in_flight: list[Job] = field(default_factory=list)
    draws: int = 0  # how many times idle clients were drawn (the draw's seed, without DP)

    @property
    def free(self) -> int:
        return self.concurrency - len(self.in_flight)

    def busy(self) -> set[int]:
        return {job.client_id for job in self.in_flight}

    def start(self, client_id: int, start_round: int, absent: bool) -> Job:
        job = Job(client_id, start_round, self.now + self.duration(client_id), absent)
        self.in_flight.append(job)
        return job

    def next_arrival(self) -> Job:
        """The job that finishes first (the lower client id on a tie); the clock moves to its finish."""
        job = min(self.in_flight, key=lambda j: (j.finish, j.client_id))
        self.in_flight.remove(job)
        self.now = job.finish
        return job

    def state_dict(self) -> dict:
        return {"now": self.now, "draws": self.draws, "in_flight": [asdict(job) for job in self.in_flight]}

    def load_state_dict(self, state: dict) -> None:
        self.now, self.draws = state["now"], state["draws"]
        self.in_flight = [Job(**job) for job in state["in_flight"]]


@dataclass
class BufferedRounds:
    """What the round coordinator keeps for fedbuff: its settings, the clock, how a job trains (flb.types.Jobs), which
    jobs never answer (flb.simulation.dropout: round, client id -> the error or None), and the global adapters that
    jobs still training started from, by round."""

    settings: FedBuffSettings
    schedule: BufferedSchedule
    jobs: Jobs
    dropout: Callable[[int, int], Exception | None]
    versions: dict[int, AdapterState] = field(default_factory=dict)

    def restart(self, schedule: dict, clients: list[Client], round_adapter: Callable[[int], AdapterState]) -> None:
        """Resumed: the clock as it was, and the jobs that were training started again from their global adapters
        (`round_adapter(round)`, from the run directory): a client's job starts from its secret state before that
        round, so it trains the same update again."""
        self.schedule.load_state_dict(schedule)
        for job in self.schedule.in_flight:
            if job.start_round not in self.versions:
                self.versions[job.start_round] = round_adapter(job.start_round)
            if not job.absent:
                self.jobs.submit(clients[job.client_id], self.versions[job.start_round], job.start_round + 1)

    def begin_round(self, round: int, global_adapter: AdapterState) -> None:
        """`global_adapter` is the newest (round - 1's); keep only the ones jobs still training started from."""
        self.versions[round - 1] = global_adapter
        in_use = {job.start_round for job in self.schedule.in_flight} | {round - 1}
        self.versions = {start: adapter for start, adapter in self.versions.items() if start in in_use}

    def start_idle(
        self, clients: list[Client], newest: int, waiting: set[int], draw: Callable[[int, int, int], list[int]]
    ) -> int:
        """Start clients neither training nor `waiting` in the buffer from the global adapter of round `newest` until
        clients_per_round train, chosen by `draw(draw number, how many idle, how many to start)`; how many started."""
        busy = self.schedule.busy() | waiting
        idle = [client for client in clients if client.client_id not in busy]
        count = min(self.schedule.free, len(idle))
        if count == 0:
            return 0
        chosen = draw(self.schedule.draws, len(idle), count)
        self.schedule.draws += 1
        for client in (idle[i] for i in chosen):
            absent = self.dropout(newest + 1, client.client_id) is not None
            self.schedule.start(client.client_id, newest, absent)
            if not absent:
                self.jobs.submit(client, self.versions[newest], newest + 1)
        return count

    def arrival(self, client: Client, job: Job, round: int) -> ClientUpdate | Exception:
        """What `job` brings in `round`: its update, why it has none, or ClientLate when it is too stale."""
        if job.absent:
            return self.dropout(job.start_round + 1, client.client_id)
        result = self.jobs.result(client)  # trained even when stale: its secret state moved on as in any mode
        if round - 1 - job.start_round > self.settings.max_staleness:
            return ClientLate.stale(client.client_id, job.start_round, round, self.settings.max_staleness)
        return result


class FitWhenAwaited:
    """flb.types.Jobs for in-process clients, which share one model: a job is trained when its result is asked for
    (in arrival order), from the global adapter it was started with."""

    def __init__(self):
        self.started: dict[int, tuple[Client, AdapterState, int]] = {}

    def submit(self, client: Client, global_adapter: AdapterState, round: int) -> None:
        self.started[client.client_id] = (client, global_adapter, round)

    def result(self, client: Client) -> ClientUpdate | Exception:
        _, global_adapter, round = self.started.pop(client.client_id)
        try:
            return client.fit(global_adapter, round)
        except Exception as exc:
            log.exception("round %d: client %d failed", round, client.client_id)
            return exc
