"""Round deadlines (server.round_deadline_s, server.min_fit_fraction): a round aggregates the updates in by its
deadline once enough are, records the rest as late (not as failures), and stays reproducible and verifiable. The
worker pool's and the Flower fleet's deadlines are tested with their own harnesses (test_execution_processes.py,
test_flower_wire.py)."""

from __future__ import annotations

import json
import time

from flb.errors import ClientLate
from flb.types import ClientUpdate, RoundDeadline
from server.coordinator import fit_in_turn


class Timed:
    """A stand-in client whose fit takes `seconds`."""

    def __init__(self, client_id: int, seconds: float):
        self.client_id, self.seconds, self.fitted = client_id, seconds, False

    def fit(self, global_adapter, round, extras=None) -> ClientUpdate:
        time.sleep(self.seconds)
        self.fitted = True
        return ClientUpdate(self.client_id, round, {}, 1, None, self.seconds, 0, "")


def test_in_turn_an_update_after_the_deadline_is_late_and_later_turns_do_not_train():
    clients = [Timed(0, 0.0), Timed(1, 0.5), Timed(2, 0.0)]
    results = fit_in_turn(clients, {}, 1, {}, RoundDeadline(time.monotonic() + 0.2, needed=1))
    assert isinstance(results[0], ClientUpdate)
    assert str(results[1]) == "client 1: its update came after the round's deadline"
    assert str(results[2]) == "client 2: the round closed at its deadline before its turn to train"
    assert isinstance(results[1], ClientLate) and isinstance(results[2], ClientLate) and not clients[2].fitted


def test_in_turn_the_round_waits_past_its_deadline_for_the_updates_it_needs():
    clients = [Timed(0, 0.3), Timed(1, 0.3), Timed(2, 0.0)]
    results = fit_in_turn(clients, {}, 1, {}, RoundDeadline(time.monotonic(), needed=2))
    assert [type(r).__name__ for r in results] == ["ClientUpdate", "ClientUpdate", "ClientLate"]
    assert all(isinstance(r, ClientUpdate) for r in fit_in_turn(clients, {}, 2, {}, None))


def test_a_round_aggregates_whoever_beat_the_deadline_records_the_late_and_replays(
    tiny_overrides, run_and_resume_after_round_1, capsys
):
    """A deadline of 10 ms that one update in three must meet: each round aggregates its first sampled client
    alone, whatever the machine's speed; the others are late, not rejected. The run, resumed after round 1, ends on
    the same adapter, and --verify --recompute recomputes every round from the updates recorded."""
    from chain.explorer import main as explorer

    deadline = ["num_clients=3", "clients_per_round=3", "chain_record=true", "server.round_deadline_s=0.01"]
    uninterrupted, resumed = run_and_resume_after_round_1(tiny_overrides + deadline + ["server.min_fit_fraction=0.3"])
    rows = [json.loads(line) for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in rows if r["kind"] == "round" and r["round"] > 0]
    assert [r["num_clients"] for r in rounds] == [1, 1] and all(r["rejected"] == [] for r in rounds)
    assert [[entry["client_id"] for entry in r["late"]] for r in rounds] == [[1, 2], [1, 2]]
    assert [r["client_id"] for r in rows if r["kind"] == "client"] == [0, 0]
    summaries = [json.loads((path / "summary.json").read_text())["final_digest"] for path in (uninterrupted, resumed)]
    assert summaries[0] == summaries[1]
    capsys.readouterr()
    assert explorer([str(uninterrupted), "--verify", "--recompute"]) == 0, capsys.readouterr().out
