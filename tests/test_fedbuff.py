"""strategy fedbuff: its arithmetic by hand, its clock, and whole runs on the tiny model (slow clients land stale,
resume is exact, worker processes give the in-process run's adapter, the audit recomputes every round)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flb.audit.digests import adapter_digest
from flb.config import FedBuffSettings, load_config
from flb.errors import ConfigError
from flb.types import ClientUpdate
from server.buffered import BufferedSchedule
from server.strategy.fedbuff import FedBuff


def update(client_id: int, round: int, tensors: dict, base: dict, num_examples: int) -> ClientUpdate:
    return ClientUpdate(client_id, round, tensors, num_examples, None, 0.0, 0, "", base=base)


def test_the_aggregate_adds_the_staleness_weighted_changes_each_from_its_own_start():
    current, older = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([0.5, 0.5])}
    fresh = update(0, 5, {"w": torch.tensor([2.0, 2.0])}, current, num_examples=3)  # started from round 4
    stale = update(1, 3, {"w": torch.tensor([1.5, -0.5])}, older, num_examples=1)  # from round 2: tau = 2
    settings = FedBuffSettings(staleness="polynomial", staleness_exponent=0.5, server_learning_rate=0.5)
    result = FedBuff(settings=settings).aggregate(current, [fresh, stale], 5, 2)["w"]
    weight_stale = 3.0**-0.5
    by_hand = [1.0 + 0.5 * (3 * 1.0 + weight_stale * 1.0) / 4, 2.0 + 0.5 * (3 * 0.0 + weight_stale * -1.0) / 4]
    assert result.tolist() == pytest.approx(by_hand, abs=1e-7)
    constant = FedBuff(settings=FedBuffSettings(staleness="constant", server_learning_rate=0.5))
    assert constant.aggregate(current, [fresh, stale], 5, 2)["w"].tolist() == pytest.approx([1.5, 1.875])
    assert result.dtype == torch.float32


def test_an_untouched_tensor_stays_bit_for_bit():
    frozen = {"a": torch.randn(4, 3)}  # ffa's LoRA A: every client and every global adapter hold the same
    updates = [update(i, 4 - i, dict(frozen), dict(frozen), num_examples=2 + i) for i in range(3)]
    assert torch.equal(FedBuff(settings=FedBuffSettings()).aggregate(frozen, updates, 4, 3)["a"], frozen["a"])


def test_the_clock_takes_arrivals_in_finish_order_and_restores():
    speeds = {0: 1.0, 1: 3.0, 2: 1.0}
    schedule = BufferedSchedule(concurrency=3, duration=speeds.__getitem__)
    for client_id in (1, 2, 0):
        schedule.start(client_id, 0, absent=False)
    first = schedule.next_arrival()
    assert (first.client_id, schedule.now) == (0, 1.0)  # a tie goes to the lower client id
    schedule.start(0, 1, absent=False)
    state = json.loads(json.dumps(schedule.state_dict()))
    restored = BufferedSchedule(concurrency=3, duration=speeds.__getitem__)
    restored.load_state_dict(state)
    order = [(j.client_id, j.start_round, j.finish) for j in (restored.next_arrival() for _ in range(3))]
    assert order == [(2, 0, 1.0), (0, 1, 2.0), (1, 0, 3.0)]
    assert restored.free == 3


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("strategy.fedbuff.buffer_size=4", "strategy.fedbuff.buffer_size"),
        ("strategy.fedbuff.staleness=hinge", "strategy.fedbuff.staleness"),
        ("strategy.fedbuff.max_staleness=-1", "strategy.fedbuff.max_staleness"),
        ("execution.mode=batched", "strategy.name"),
        ("server.round_deadline_s=5", "server.round_deadline_s"),
        ("chain.record_participants=false", "chain.record_participants"),
        ("strategy.lora_aggregation=svd", "strategy.lora_aggregation"),
    ],
)
def test_what_fedbuff_does_not_combine_with_is_one_line(override, key):
    with pytest.raises(ConfigError, match=key) as error:
        load_config(None, ["strategy.name=fedbuff", "num_clients=4", "clients_per_round=3", override])
    assert "\n" not in str(error.value)


FEDBUFF = [
    "num_clients=4",
    "clients_per_round=3",
    "num_rounds=4",
    "strategy.name=fedbuff",
    "simulation.client_speed=[1, 1, 3, 1]",  # client 2 takes three clock units: its updates land stale
    "chain_record=true",
    "comm.compression=int8",  # opened from the global adapter each client started from
]


def rounds_of(run_dir: Path) -> tuple[dict[int, dict], list[dict]]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {m["round"]: m for m in lines if m["kind"] == "round"}, [m for m in lines if m["kind"] == "client"]


def by_hand(run_dir: Path, round: int, clients: list[dict], settings: FedBuffSettings) -> dict:
    """Round `round`'s aggregate from its files: global + sum_k n_k s(tau_k) (x_k - b_k) / sum_k n_k."""
    from flb.adapters.compression import open_update

    adapter = lambda n: load_file(str(run_dir / f"round_{n}" / "adapter_model.safetensors"))  # noqa: E731
    current, total = adapter(round - 1), sum(c["num_examples"] for c in clients)
    change = {name: torch.zeros_like(t, dtype=torch.float64) for name, t in current.items()}
    for client in clients:
        start = client.get("start_round", round - 1)
        base = adapter(start)
        sent = load_file(str(run_dir / f"round_{round}" / "updates" / f"client_{client['client_id']}.safetensors"))
        opened = open_update("int8", sent, base)
        weight = client["num_examples"] * (1 + round - 1 - start) ** -settings.staleness_exponent / total
        for name in change:
            change[name] += (opened[name].double() - base[name].double()) * weight
    return {name: (current[name].double() + change[name]).float() for name in current}


@pytest.fixture(scope="module")
def fedbuff_runs(tiny_model_dir, tmp_path_factory):
    """A fedbuff run in worker processes and, from a copy of it after round 1, the same run resumed in process."""
    from tests.snapshots import run_and_resume_after_round_1
    from tests.tiny_model import tiny_run_overrides

    output = tmp_path_factory.mktemp("fedbuff")
    overrides = [*tiny_run_overrides(tiny_model_dir, output), *FEDBUFF, "execution.mode=processes"]
    return run_and_resume_after_round_1(
        load_config(None, overrides), output / "after-round-1", ("execution.mode=sequential",)
    )


def test_a_slow_client_lands_stale_and_each_round_is_its_weighted_sum(fedbuff_runs):
    run_dir, _ = fedbuff_runs
    rounds, clients = rounds_of(run_dir)
    staleness = {(c["round"], c["client_id"]): c["round"] - 1 - c.get("start_round", c["round"] - 1) for c in clients}
    assert staleness[(4, 2)] == 3  # the slow client started from round 0, and lands three rounds on
    assert {tau for (_, client_id), tau in staleness.items() if client_id != 2} == {0, 1}  # three train, two land
    settings = load_config(None, FEDBUFF).strategy.fedbuff
    for number in (1, 2, 3, 4):
        aggregated = [c for c in clients if c["round"] == number]
        assert len(aggregated) == settings.buffer_size
        assert adapter_digest(by_hand(run_dir, number, aggregated, settings)) == rounds[number]["global_digest"]


def test_resumed_in_process_it_ends_on_the_worker_processes_adapter(fedbuff_runs):
    in_workers, resumed = fedbuff_runs
    assert rounds_of(resumed)[0][4]["global_digest"] == rounds_of(in_workers)[0][4]["global_digest"]


def test_both_runs_verify_and_recompute_from_the_chain(fedbuff_runs, capsys):
    from chain import explorer

    for run_dir in fedbuff_runs:
        assert explorer.main([str(run_dir), "--verify", "--recompute"]) == 0, capsys.readouterr().out
        assert "0 problems" in capsys.readouterr().out
