"""What a node answers (flb_flower/node.py, as its worker calls it), called in-process with real Flower messages: a node
trains its own copy of the base model (`model-path`) only when it is the server's."""

from __future__ import annotations

import shutil

import pytest
from flwr.app import Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity
from safetensors.torch import load_file, save_file

import assembly
from flb.config import load_config
from flb.errors import ModelError
from flb.model.load import base_model_digest, get_adapter_state
from flb_flower import node, wire
from flb_flower.fleet import Fleet
from tests.test_flower_wire import StubGrid
from tests.tiny_model import tiny_run_overrides

RUN_ID = "20260101-000000-abcd"


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """The server's config, its initial global adapter and the digest of its base model."""
    config = load_config(None, tiny_run_overrides(tiny_model_dir, tmp_path_factory.mktemp("runs")) + ["local_steps=1"])
    _, model = assembly.build_model(config)
    return config, get_adapter_state(model), base_model_digest(model)


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """The task identity Flower sets before an app creates messages."""
    for name, value in (("_run_id", 1), ("_node_id", 7), ("_task_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


def node_config(state_dir, model_path) -> dict:
    return {"partition-id": 0, "num-partitions": 2, "state-dir": str(state_dir), "model-path": str(model_path)}


def train_message(server, base_model_digest: str | None = None) -> Message:
    """Round 1's train message, with the server's digest unless another is given."""
    config, global_adapter, digest = server
    content = wire.train_content(
        config.to_dict(),
        RUN_ID,
        global_adapter,
        1,
        None,
        digest if base_model_digest is None else base_model_digest,
        {},
    )
    return Message(content, dst_node_id=7, message_type=wire.TRAIN)


def test_a_node_trains_its_own_copy_of_the_servers_base_model(server, tiny_model_dir, tmp_path):
    own_copy = shutil.copytree(tiny_model_dir, tmp_path / "own-copy")
    reply = node.train(train_message(server).content, node_config(tmp_path / "state", own_copy))
    assert wire.read_update(reply, 0).round == 1


@pytest.fixture(scope="module")
def other_model(tiny_model_dir, tmp_path_factory):
    """The tiny model with one tensor slightly changed: another base model, with the same names and shapes."""
    other = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("models") / "other-model")
    weights = load_file(other / "model.safetensors")
    weights["model.norm.weight"] = weights["model.norm.weight"] * 1.001
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})
    return other


def test_a_node_refuses_to_train_a_different_base_model(server, other_model, tmp_path):
    with pytest.raises(
        ModelError,
        match=r"^node config model-path='.+/other-model' holds a base model with digest "
        r"[0-9a-f]{16}\.\.\., the server's is [0-9a-f]{16}\.\.\.; point model-path "
        r"at a copy of the server's base model$",
    ):
        node.train(train_message(server).content, node_config(tmp_path / "state", other_model))


def round_1_through_a_fleet(server, config: dict):
    """Client 0's round 1 result on the server's fleet, its one node answering as flb_flower.node does with node
    config `config` (an exception reported the way flwr-clientapp reports a ClientApp's)."""
    server_config, global_adapter, digest = server

    def answer(node_id: int, message: Message):
        if message.metadata.message_type == wire.QUERY:
            return wire.info_content(0, 5, None)
        try:
            return node.train(message.content, config)
        except Exception as exc:
            return Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(exc)}:<'{exc}'>")

    grid = StubGrid([100], answer)
    fleet = Fleet(grid, server_config.to_dict(), wait_for_nodes_s=5, round_timeout_s=60, query_timeout_s=5, poll_s=0.01)
    (result,) = fleet.fit_all(fleet.join(RUN_ID, 1, digest), global_adapter, 1, {})
    return result


def test_the_refusal_reaches_the_server_as_that_clients_failure(server, other_model, tmp_path):
    """The fleet sends its base model digest to a node answering as flb_flower.node does; the error Flower returns for
    the node's refusal is client 0's failure, with the node's reason."""
    result = round_1_through_a_fleet(server, node_config(tmp_path / "state", other_model))
    assert isinstance(result, RuntimeError) and "holds a base model with digest" in str(result)


def test_a_node_with_a_different_base_model_does_not_even_say_which_client_it_serves(server, other_model, tmp_path):
    """Refused at the first query, the node never joins: round 0 records no data upload of a client that could not
    train the server's model."""
    config, _, digest = server
    query = Message(
        wire.query_content(config.to_dict(), RUN_ID, wire.DESCRIBE, None, digest),
        dst_node_id=7,
        message_type=wire.QUERY,
    )
    with pytest.raises(ModelError, match="holds a base model with digest"):
        node.query(query.content, node_config(tmp_path / "state", other_model))


def test_a_node_refuses_a_train_message_without_the_servers_digest(server, tiny_model_dir, tmp_path):
    with pytest.raises(ModelError, match=r"the server's is not sent;"):
        node.train(train_message(server, "").content, node_config(tmp_path / "state", tiny_model_dir))


def test_a_missing_model_path_names_the_node_config_key(server, tmp_path):
    with pytest.raises(ModelError, match=r"^node config model-path: model\.model_path: .+/absent' does not exist"):
        node.train(train_message(server).content, node_config(tmp_path / "state", tmp_path / "absent"))


DOMAIN = {"chain_id": 31337, "contract": "0x" + "11" * 20}


def recording_run(server, **chain) -> dict:
    """The server's config as sent to nodes, recording on a chain with `chain` settings."""
    config = server[0].to_dict()
    return {**config, "chain_record": True, "chain": {**config["chain"], **chain}}


def query_message(server, config: dict, action: str, run_id: str = RUN_ID) -> Message:
    return Message(
        wire.query_content(config, run_id, action, DOMAIN, server[2]), dst_node_id=7, message_type=wire.QUERY
    )


def sent_bytes(reply: RecordDict) -> bytes:
    """What a reply puts on the wire: its content as Flower serializes it."""
    from flwr.common.serde import recorddict_to_proto

    return recorddict_to_proto(reply).SerializeToString()


def test_a_fresh_node_key_never_leaves_its_state_dir(server, tiny_model_dir, tmp_path):
    """chain.client_keys fresh: the node makes its key for the run in state-dir/<run id>/private; what it sends (its
    description, signed upload and update) holds the address, never the key, and no other file holds the key."""
    from eth_account import Account

    config, global_adapter, digest = server
    run = recording_run(server)
    context = node_config(tmp_path / "state", tiny_model_dir)
    replies = [
        node.query(query_message(server, run, action).content, context) for action in (wire.DESCRIBE, wire.UPLOAD)
    ]
    replies.append(node.train(wire.train_content(run, RUN_ID, global_adapter, 1, DOMAIN, digest, {}), context))
    key_file = tmp_path / "state" / RUN_ID / "private" / "signing_key"
    key = bytes.fromhex(key_file.read_text().strip().removeprefix("0x"))
    assert wire.read_info(replies[0])[2] == Account.from_key(key).address
    assert key_file.stat().st_mode & 0o077 == 0
    for reply in replies:
        assert key not in sent_bytes(reply) and key.hex().encode() not in sent_bytes(reply).lower()
    holders = [
        path
        for path in tmp_path.rglob("*")
        if path.is_file() and (key in path.read_bytes() or key.hex().encode() in path.read_bytes())
    ]
    assert holders == [key_file]


def test_fresh_node_keys_are_per_run_and_a_resume_keeps_them(server, tiny_model_dir, tmp_path):
    def address(run_id: str) -> str:
        node.local_client.cache_clear()  # a new worker: a restarted node
        reply = node.query(
            query_message(server, recording_run(server), wire.DESCRIBE, run_id).content,
            node_config(tmp_path / "state", tiny_model_dir),
        )
        return wire.read_info(reply)[2]

    first = address(RUN_ID)
    assert address("20260102-000000-dcba") != first
    assert address(RUN_ID) == first


def test_a_nodes_keystore_is_used_only_with_persistent_keys(server, tiny_model_dir, tmp_path, monkeypatch):
    from chain.accounts import create_keystore
    from flb.audit.keystore import KeystoreError

    monkeypatch.setenv("FLB_TEST_NODE_PASSWORD", "node-password")
    keystore = tmp_path / "node-key.json"
    own = create_keystore(keystore, "node-password", iterations=2**10)
    with_keystore = {**node_config(tmp_path / "state", tiny_model_dir), "keystore": str(keystore)}

    def address(client_keys: str, config: dict) -> str:
        run = recording_run(server, client_keys=client_keys, password_env="FLB_TEST_NODE_PASSWORD")
        return wire.read_info(node.query(query_message(server, run, wire.DESCRIBE).content, config))[2]

    assert address("persistent", with_keystore) == own
    assert address("fresh", with_keystore) != own
    with pytest.raises(
        KeystoreError,
        match=r"^chain.client_keys: persistent, but this node's config names no "
        r"keystore; start the SuperNode with --node-config",
    ):
        address("persistent", node_config(tmp_path / "state", tiny_model_dir))


def pinned_config(state_dir, model_path, **pin) -> dict:
    return {**node_config(state_dir, model_path), **pin}


def dp_run(server, noise_multiplier: float) -> dict:
    """The server's config with local DP on at `noise_multiplier`."""
    run = server[0].to_dict()
    return {**run, "client": {"local_dp": True, "dp": {**run["client"]["dp"], "noise_multiplier": noise_multiplier}}}


def dp_train_message(server, noise_multiplier: float) -> Message:
    config, global_adapter, digest = server
    return Message(
        wire.train_content(dp_run(server, noise_multiplier), RUN_ID, global_adapter, 1, None, digest, {}),
        dst_node_id=7,
        message_type=wire.TRAIN,
    )


PIN_Z1 = {"dp-mechanism": "update", "dp-noise-multiplier": 1.0}


def test_a_node_refuses_a_run_that_lowers_the_noise_it_pins(server, tiny_model_dir, tmp_path, caplog):
    from client.privacy_policy import WeakerPrivacy

    pinned = pinned_config(tmp_path / "state", tiny_model_dir, **PIN_Z1)
    with pytest.raises(
        WeakerPrivacy,
        match=r"^client.dp.noise_multiplier: this node pins at least 1 "
        r"\(dp-noise-multiplier\), the server sends 0.3;",
    ):
        node.train(dp_train_message(server, 0.3).content, pinned)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "flb_flower.node" and r.levelname == "ERROR"]
    assert line.startswith("not training: client.dp.noise_multiplier: this node pins at least 1")
    assert not list((tmp_path / "state").rglob("state_round_1.json"))  # nothing trained, nothing saved for round 1


def test_a_node_trains_a_run_at_least_as_private_as_its_pin(server, tiny_model_dir, tmp_path):
    pinned = pinned_config(tmp_path / "state", tiny_model_dir, **PIN_Z1)
    reply = node.train(dp_train_message(server, 2.0).content, pinned)
    assert wire.read_update(reply, 0).privacy["noise_multiplier"] == 2.0


def test_a_config_that_looks_strong_does_not_hide_the_noise_planned_at_join(server, tiny_model_dir, tmp_path):
    """The server asks which client the node serves with z = 0.3 (the client plans it and keeps it in its private
    state), then sends z = 2 to train: the node compares the noise it would add, and refuses."""
    from client.privacy_policy import WeakerPrivacy

    pinned = pinned_config(tmp_path / "state", tiny_model_dir, **PIN_Z1)
    node.query(query_message(server, dp_run(server, 0.3), wire.DESCRIBE).content, pinned)
    node.local_client.cache_clear()  # a new worker: a restarted node
    with pytest.raises(
        WeakerPrivacy,
        match=r"the server sends 2, but the client's private state for this run keeps "
        r"z = 0.3;",
    ):
        node.train(dp_train_message(server, 2.0).content, pinned)


def test_a_privacy_refusal_is_that_clients_failure_on_the_server(server, tiny_model_dir, tmp_path):
    pinned = pinned_config(tmp_path / "state", tiny_model_dir, **{"dp-mechanism": "update", "dp-target-epsilon": 4.0})
    result = round_1_through_a_fleet(server, pinned)
    assert isinstance(result, RuntimeError)
    assert "client.local_dp: this node pins true (dp-mechanism=update), the server sends false" in str(result)


@pytest.fixture
def owner():
    """A process standing in for the SuperNode's flower-superexec: a node's worker lives as long as it does."""
    import subprocess

    process = subprocess.Popen(["sleep", "600"])
    yield process
    process.kill()
    process.wait()


def wait_until_gone(path, timeout_s: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not path.exists()


def test_a_nodes_worker_loads_the_model_once_answers_each_message_and_ends_with_its_supernode(
    server, tiny_model_dir, tmp_path, owner, capfd
):
    """What the ClientApp does with each message (node_worker.ask), against a real worker process: the first message
    starts it; an error is the node's reason and the worker answers on; the model is loaded once for the messages of a
    run; its socket is the node's user's only; when the process it follows ends, it ends and removes its socket."""
    from flb_flower import node_worker

    config, global_adapter, digest = server
    settings = node_config(tmp_path / "state", tiny_model_dir)
    with pytest.raises(node_worker.NodeWorkerError, match=r"^ModelError: node config model-path: model\.model_path: "):
        node_worker.ask(
            node_config(tmp_path / "state", tmp_path / "absent"), wire.TRAIN, train_message(server).content, owner.pid
        )
    info = node_worker.ask(
        settings, wire.QUERY, query_message(server, config.to_dict(), wire.DESCRIBE).content, owner.pid
    )
    updates = [
        node_worker.ask(
            settings,
            wire.TRAIN,
            wire.train_content(config.to_dict(), RUN_ID, global_adapter, round, None, digest, {}),
            owner.pid,
        )
        for round in (1, 2)
    ]
    client_id, examples, _ = wire.read_info(info)
    assert client_id == 0 and examples > 0
    assert [wire.read_update(update, 0).round for update in updates] == [1, 2]
    output = capfd.readouterr().err
    assert output.count("answering on") == 1 and output.count(f"loaded the base model for run {RUN_ID}") == 1
    socket = node_worker.socket_path(settings, owner.pid)
    assert socket.parent.stat().st_mode & 0o077 == 0 and socket.stat().st_mode & 0o077 == 0
    owner.kill()
    assert wait_until_gone(socket)


def test_a_worker_ends_with_its_supernode_even_while_the_supernodes_superexec_runs_on(tmp_path):
    """Flower's flower-superexec outlives a SuperNode stopped alone (kill PID): the worker follows the SuperNode too.
    Stand-ins: a shell (the SuperNode) whose child `sleep` (its flower-superexec) is the ClientApp's parent."""
    import os
    import signal
    import subprocess

    from flb_flower import node_worker

    supernode = subprocess.Popen(["sh", "-c", "sleep 600 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    superexec = int(supernode.stdout.readline())
    try:
        settings = node_config(tmp_path / "state", tmp_path / "no-model")
        with pytest.raises(node_worker.NodeWorkerError, match="message type 'evaluate'"):  # the worker is started
            node_worker.ask(settings, "evaluate", RecordDict(), superexec)
        supernode.kill()
        supernode.wait()
        assert wait_until_gone(node_worker.socket_path(settings, superexec))
    finally:
        os.kill(superexec, signal.SIGKILL)


def test_a_state_dir_too_long_for_the_workers_socket_is_refused_in_one_line(tmp_path):
    from flb_flower import node_worker

    settings = node_config(tmp_path / ("s" * 120), tmp_path / "no-model")
    with pytest.raises(
        node_worker.NodeWorkerError, match=r"^node config state-dir='.+': the worker's socket .+ is longer"
    ):
        node_worker.ask(settings, wire.TRAIN, RecordDict(), owner=1)
    assert not (tmp_path / ("s" * 120)).exists()


def test_a_worker_folder_others_can_open_is_refused_in_one_line(tmp_path):
    from flb_flower import node_worker

    settings = node_config(tmp_path / "state", tmp_path / "no-model")
    folder = node_worker.socket_path(settings, 1).parent
    folder.mkdir(parents=True, mode=0o755)
    folder.chmod(0o755)
    with pytest.raises(node_worker.NodeWorkerError, match=r"worker folder must be this user's alone .+`chmod 700 "):
        node_worker.ask(settings, wire.TRAIN, RecordDict(), owner=1)


def test_a_worker_of_another_app_version_steps_aside(server, tmp_path, owner, monkeypatch):
    """A SuperNode that runs a new FAB is not answered by the worker the old one started: asked by a ClientApp of
    another version, the worker ends (and so does the one started in its place, of this version)."""
    from flb_flower import node_worker
    from tests.flower_loopback import REPO

    settings = node_config(tmp_path / "state", tmp_path / "no-model")
    with pytest.raises(node_worker.NodeWorkerError, match="message type 'evaluate'"):  # a worker of this version
        node_worker.ask(settings, "evaluate", RecordDict(), owner.pid)
    monkeypatch.setattr(node_worker, "APP", "/another/version")
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the worker started in its place imports this version
    with pytest.raises(node_worker.NodeWorkerError, match="another app version"):
        node_worker.ask(settings, "evaluate", RecordDict(), owner.pid)
    assert wait_until_gone(node_worker.socket_path(settings, owner.pid))
