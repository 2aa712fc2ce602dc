"""The Flower app on loopback: a SuperLink and two SuperNodes as subprocesses, runs through `flwr run`.

The final adapter of a Flower run equals the in-process run's bit for bit: the nodes run the same
SFTClient with the same derived seeds, adapters travel as float32 arrays (exact), and the server
aggregates with the same strategy code.
"""
from __future__ import annotations

import json
import shlex

import pytest

import main_simple_fl
from flb.config import load_config
from flb.digests import adapter_file_digest
from tests.flower_loopback import Loopback, stop, wait_for_round

pytestmark = pytest.mark.flower
RUN_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def loopback(tmp_path_factory, request):
    federation = Loopback(tmp_path_factory.mktemp("flower"))
    request.addfinalizer(federation.stop_all)
    federation.start_superlink()
    federation.nodes = [federation.start_supernode(i, 2) for i in range(2)]
    return federation


def flb_args(overrides: list[str]) -> list[str]:
    return [arg for override in overrides for arg in ("--set", override)]


def round_records(run_path) -> list[dict]:
    records = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "round"]


def finish(loopback: Loopback, run) -> None:
    assert run.wait(timeout=RUN_TIMEOUT_S + 10) == 0, loopback.logs()


def test_flower_run_gives_the_in_process_final_adapter(loopback, tiny_overrides, tmp_path):
    flower_runs = tmp_path / "flower-runs"
    run = loopback.flwr_run(flb_args(tiny_overrides + [f"output_dir={flower_runs}"]), RUN_TIMEOUT_S)
    in_process = main_simple_fl.run(load_config(None, tiny_overrides))
    finish(loopback, run)
    flower = (flower_runs / "latest").resolve()
    assert [r["num_clients"] for r in round_records(flower)] == [0, 2, 2]
    assert adapter_file_digest(flower / "final_adapter") == adapter_file_digest(in_process / "final_adapter")


def test_a_node_killed_mid_run_costs_its_update_and_a_late_node_joins(loopback, tiny_overrides, tmp_path):
    runs = tmp_path / "flower-runs"
    run = loopback.flwr_run(flb_args(tiny_overrides + [f"output_dir={runs}", "num_rounds=3"]), RUN_TIMEOUT_S,
                            **{"round-timeout-s": 25})
    wait_for_round(runs, 1, RUN_TIMEOUT_S)
    stop(loopback.nodes[1])  # round 2 is under way: its message to node 1 is never answered
    loopback.start_supernode(1, 2)  # a replacement joins late: it takes part from round 3
    finish(loopback, run)
    rounds = round_records((runs / "latest").resolve())
    assert [r["num_clients"] for r in rounds] == [0, 2, 1, 2]
    assert "sent no reply in round 2" in rounds[2]["rejected"][0]["reason"]
