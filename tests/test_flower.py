"""The Flower app on insecure loopback: a SuperLink and two SuperNodes as subprocesses, a run through `flwr run`,
recorded on the embedded chain with local DP, that loses a node mid-round and gains its restarted replacement; the
tests check what that run left behind. (That a Flower run ends on the in-process run's final adapter, bit for bit,
is checked once, on the secure SuperLink: tests/test_flower_secure.py.)
"""

from __future__ import annotations

import json

import pytest

from chain import explorer
from flb.privacy.accounting import epsilon, rdp_accountant
from flb.privacy.private_state import PrivateState
from tests.flower_loopback import Loopback, stop

pytestmark = pytest.mark.flower
RUN_TIMEOUT_S = 420
# Well above a healthy round on a busy 2-core machine (a node's worker keeps the model loaded: each message costs
# Flower's polling, a fresh ClientApp process and the training, 5-10 s here); the round that lost a node waits this
# long.
ROUND_TIMEOUT_S = 45


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


@pytest.fixture(scope="module")
def recorded_run(loopback, tiny_model_dir, tmp_path_factory):
    """Two rounds with local DP, recorded on the embedded chain. Node 1 is killed once round 1's messages are out
    and started again on the same state-dir (a restarted machine): it signs again as client 1 from round 2."""
    runs = tmp_path_factory.mktemp("recorded") / "runs"
    overrides = [
        f"model.model_path={tiny_model_dir}",
        f"output_dir={runs}",
        "num_clients=2",
        "clients_per_round=2",
        "num_rounds=2",
        "local_steps=2",
        "eval.size=8",
        "eval.max_new_tokens=2",
        "sft.max_length=96",
        "model.lora.dropout=0.0",
        "chain_record=true",
        "chain.backend=embedded",
        "client.local_dp=true",
        "client.dp.mode=update",
    ]
    node_0, trained_before = loopback.nodes[0], loopback.received(loopback.nodes[0], "train")
    run = loopback.flwr_run(flb_args(overrides), RUN_TIMEOUT_S, **{"round-timeout-s": ROUND_TIMEOUT_S})
    loopback.wait_until_received(node_0, "train", trained_before + 1, RUN_TIMEOUT_S)  # round 1 is under way
    stop(loopback.nodes[1])  # its round 1 message is never answered
    loopback.nodes[1] = loopback.start_supernode(1, 2)
    finish(loopback, run)
    return (runs / "latest").resolve()


def test_a_node_killed_mid_run_costs_its_update_and_its_restart_joins_late(recorded_run):
    rounds = round_records(recorded_run)
    assert [r["num_clients"] for r in rounds] == [0, 1, 2]
    (missing,) = rounds[1]["rejected"]
    assert missing["client_id"] == 1 and missing["reason"].startswith("ClientUnavailable: SuperNode")


def test_each_node_loads_the_model_once_per_run(recorded_run, loopback):
    """Node 0 answered four messages (which client, the data upload, two rounds) with one worker; node 1's second
    SuperNode (the restart) started a worker of its own, which loaded the model once for its two messages."""
    for node in loopback.nodes:
        log = loopback.log_files[node.pid].read_text()
        assert log.count(f"loaded the base model for run {recorded_run.name}") == 1, log[-3000:]
        assert log.count("answering on") == 1


def test_the_recorded_flower_run_verifies_against_its_chain(recorded_run, capsys):
    assert explorer.main([str(recorded_run), "--verify"]) == 0, capsys.readouterr().out
    assert "0 problems" in capsys.readouterr().out


def test_each_clients_secrets_stay_in_its_nodes_state_dir(recorded_run, loopback):
    assert not list((recorded_run / "private").glob("client_*"))
    for partition in range(2):
        private = loopback.state_dir(partition) / recorded_run.name / "private"
        assert (private / "signing_key").is_file() and PrivateState(private).latest() is not None


def test_the_server_reports_each_clients_own_epsilon(recorded_run, loopback):
    """The epsilon in metrics.jsonl is the one the client's accountant, on its node, gives."""
    clients = round_records(recorded_run)[-1]["privacy"]["clients"]
    assert clients["0"]["steps"] == 2  # one Gaussian step per round taken part in
    for partition in range(2):
        report = clients[str(partition)]
        state = PrivateState(loopback.state_dir(partition) / recorded_run.name / "private").latest()
        on_node = epsilon(rdp_accountant(state["privacy"]["accountant"]), report["delta"])
        assert report["mechanism"] == "local_update" and report["epsilon"] == on_node


def test_a_fedbuff_run_over_flower_ends_on_the_in_process_adapter(recorded_run, loopback, tiny_model_dir, tmp_path):
    """strategy fedbuff on the SuperNodes (each job a train message of its own, awaited in the clock's order, the
    slow node's arriving stale) ends on the adapter of the same run in this process, and verifies."""
    import assembly
    from flb.audit.digests import adapter_file_digest
    from flb.config import load_config
    from tests.tiny_model import tiny_run_overrides

    fedbuff = [
        "num_rounds=3",
        "local_steps=2",
        "eval.size=8",
        "eval.max_new_tokens=2",
        "chain_record=true",
        "strategy.name=fedbuff",
        "strategy.fedbuff.buffer_size=1",
        "server.min_clients=1",
        "simulation.client_speed=[1, 2]",  # client 1 lands at clock 2 after client 0 twice: round 3, from round 0
    ]
    in_process = assembly.run(load_config(None, [*tiny_run_overrides(tiny_model_dir, tmp_path / "here"), *fedbuff]))
    overrides = [*tiny_run_overrides(tiny_model_dir, tmp_path / "flower"), *fedbuff]
    finish(loopback, loopback.flwr_run(flb_args(overrides), RUN_TIMEOUT_S))
    flower = (tmp_path / "flower" / "latest").resolve()
    clients = [json.loads(line) for line in (flower / "metrics.jsonl").read_text().splitlines()]
    assert [c.get("start_round") for c in clients if c["kind"] == "client" and c["client_id"] == 1] == [0]
    assert adapter_file_digest(flower / "final_adapter") == adapter_file_digest(in_process / "final_adapter")
    assert explorer.main([str(flower), "--verify", "--recompute"]) == 0


def test_a_node_down_at_the_start_joins_later_and_holds_back_no_other_client(
    recorded_run, loopback, tiny_model_dir, tmp_path, capsys
):
    """Node 0 is down when the run starts: after wait-for-nodes-s the run starts with client 1 alone, registered
    first; node 0 comes up once round 1 is under way, and client 0 is registered then and sampled only afterwards.
    The chain lists client 1 before client 0, and the run verifies and recomputes with both listed as participants."""
    from chain.trail import read_trail
    from tests.tiny_model import tiny_run_overrides

    stop(loopback.nodes[0])
    overrides = [
        *tiny_run_overrides(tiny_model_dir, tmp_path),
        "clients_per_round=1",
        "num_rounds=4",
        "local_steps=2",
        "eval.size=8",
        "eval.max_new_tokens=2",
        "chain_record=true",
        "seed=6",  # rounds 2, 3 and 4 each draw the first of the two clients: client 0, once it has joined
    ]
    trained_before = loopback.received(loopback.nodes[1], "train")
    run = loopback.flwr_run(flb_args(overrides), RUN_TIMEOUT_S, **{"wait-for-nodes-s": 5})
    loopback.wait_until_received(loopback.nodes[1], "train", trained_before + 1, RUN_TIMEOUT_S)
    loopback.nodes[0] = loopback.start_supernode(0, 2)
    finish(loopback, run)
    run_path = (tmp_path / "latest").resolve()
    accounts = read_trail(run_path)["accounts"]
    assert accounts["ids"] == [1, 0]
    rows = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]
    sampled = [r["round"] for r in rows if r["kind"] == "client" and r["client_id"] == 0]
    assert sampled and 1 not in sampled
    listed = tmp_path / "participants.txt"
    listed.write_text("\n".join(accounts["clients"]) + "\n")
    assert explorer.main([str(run_path), "--verify", "--recompute", "--clients", str(listed)]) == 0, (
        capsys.readouterr().out
    )
