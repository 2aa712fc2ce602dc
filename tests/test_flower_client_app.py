"""The ClientApp's node config (flb_flower/client_app.py), called in-process with real Flower messages: a node
trains its own copy of the base model (`model-path`) only when it is the server's."""

from __future__ import annotations

import shutil

import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity
from safetensors.torch import load_file, save_file

import assembly
from flb.config import load_config
from flb.errors import ModelError
from flb.model.load import base_model_digest, get_adapter_state
from flb_flower import client_app, wire
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


def node_context(state_dir, model_path) -> Context:
    settings = {"partition-id": 0, "num-partitions": 2, "state-dir": str(state_dir), "model-path": str(model_path)}
    return Context(run_id=1, node_id=7, node_config=settings, state=RecordDict(), run_config={})


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
    reply = client_app.train(train_message(server), node_context(tmp_path / "state", own_copy))
    assert wire.read_update(reply.content, 0).round == 1


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
        client_app.train(train_message(server), node_context(tmp_path / "state", other_model))


def test_the_refusal_reaches_the_server_as_that_clients_failure(server, other_model, tmp_path):
    """The fleet sends its base model digest to a node running the real ClientApp; the error Flower returns for
    the node's refusal is client 0's failure, with the node's reason."""
    config, global_adapter, digest = server

    def node(node_id: int, message: Message):
        if message.metadata.message_type == wire.QUERY:
            return wire.info_content(0, 5, None)
        try:
            return client_app.train(message, node_context(tmp_path / "state", other_model)).content
        except Exception as exc:  # reported the way flwr-clientapp reports a ClientApp's exception
            return Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(exc)}:<'{exc}'>")

    fleet = Fleet(
        StubGrid([100], node), config.to_dict(), wait_for_nodes_s=5, round_timeout_s=60, query_timeout_s=5, poll_s=0.01
    )
    (result,) = fleet.fit_all(fleet.join(RUN_ID, 1, digest), global_adapter, 1, {})
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
        client_app.query(query, node_context(tmp_path / "state", other_model))


def test_a_node_refuses_a_train_message_without_the_servers_digest(server, tiny_model_dir, tmp_path):
    with pytest.raises(ModelError, match=r"the server's is not sent;"):
        client_app.train(train_message(server, ""), node_context(tmp_path / "state", tiny_model_dir))


def test_a_missing_model_path_names_the_node_config_key(server, tmp_path):
    with pytest.raises(ModelError, match=r"^node config model-path: model\.model_path: .+/absent' does not exist"):
        client_app.train(train_message(server), node_context(tmp_path / "state", tmp_path / "absent"))


DOMAIN = {"chain_id": 31337, "contract": "0x" + "11" * 20}


def recording_run(server, **chain) -> dict:
    """The server's config as sent to nodes, recording on a chain with `chain` settings."""
    config = server[0].to_dict()
    return {**config, "chain_record": True, "chain": {**config["chain"], **chain}}


def query_message(server, config: dict, action: str, run_id: str = RUN_ID) -> Message:
    return Message(
        wire.query_content(config, run_id, action, DOMAIN, server[2]), dst_node_id=7, message_type=wire.QUERY
    )


def sent_bytes(reply: Message) -> bytes:
    """What a reply puts on the wire: its content as Flower serializes it."""
    from flwr.common.serde import recorddict_to_proto

    return recorddict_to_proto(reply.content).SerializeToString()


def test_a_fresh_node_key_never_leaves_its_state_dir(server, tiny_model_dir, tmp_path):
    """chain.client_keys fresh: the node makes its key for the run in state-dir/<run id>/private; what it sends (its
    description, signed upload and update) holds the address, never the key, and no other file holds the key."""
    from eth_account import Account

    config, global_adapter, digest = server
    run = recording_run(server)
    context = node_context(tmp_path / "state", tiny_model_dir)
    replies = [client_app.query(query_message(server, run, action), context) for action in (wire.DESCRIBE, wire.UPLOAD)]
    replies.append(
        client_app.train(
            Message(
                wire.train_content(run, RUN_ID, global_adapter, 1, DOMAIN, digest, {}),
                dst_node_id=7,
                message_type=wire.TRAIN,
            ),
            context,
        )
    )
    key_file = tmp_path / "state" / RUN_ID / "private" / "signing_key"
    key = bytes.fromhex(key_file.read_text().strip().removeprefix("0x"))
    assert wire.read_info(replies[0].content)[2] == Account.from_key(key).address
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
        client_app.local_client.cache_clear()  # a new ClientApp process, as Flower starts for every message
        reply = client_app.query(
            query_message(server, recording_run(server), wire.DESCRIBE, run_id),
            node_context(tmp_path / "state", tiny_model_dir),
        )
        return wire.read_info(reply.content)[2]

    first = address(RUN_ID)
    assert address("20260102-000000-dcba") != first
    assert address(RUN_ID) == first


def test_a_nodes_keystore_is_used_only_with_persistent_keys(server, tiny_model_dir, tmp_path, monkeypatch):
    from chain.accounts import create_keystore
    from flb.audit.keystore import KeystoreError

    monkeypatch.setenv("FLB_TEST_NODE_PASSWORD", "node-password")
    keystore = tmp_path / "node-key.json"
    own = create_keystore(keystore, "node-password", iterations=2**10)
    context = node_context(tmp_path / "state", tiny_model_dir)
    context.node_config["keystore"] = str(keystore)

    def address(client_keys: str, node: Context) -> str:
        run = recording_run(server, client_keys=client_keys, password_env="FLB_TEST_NODE_PASSWORD")
        return wire.read_info(client_app.query(query_message(server, run, wire.DESCRIBE), node).content)[2]

    assert address("persistent", context) == own
    assert address("fresh", context) != own
    with pytest.raises(
        KeystoreError,
        match=r"^chain.client_keys: persistent, but this node's config names no "
        r"keystore; start the SuperNode with --node-config",
    ):
        address("persistent", node_context(tmp_path / "state", tiny_model_dir))


def pinned_context(state_dir, model_path, **pin) -> Context:
    context = node_context(state_dir, model_path)
    context.node_config.update(pin)
    return context


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

    node = pinned_context(tmp_path / "state", tiny_model_dir, **PIN_Z1)
    with pytest.raises(
        WeakerPrivacy,
        match=r"^client.dp.noise_multiplier: this node pins at least 1 "
        r"\(dp-noise-multiplier\), the server sends 0.3;",
    ):
        client_app.train(dp_train_message(server, 0.3), node)
    (line,) = [record.getMessage() for record in caplog.records if record.name == "flb_flower.client_app"]
    assert line.startswith("not training: client.dp.noise_multiplier: this node pins at least 1")
    assert not list((tmp_path / "state").rglob("state_round_1.json"))  # nothing trained, nothing saved for round 1


def test_a_node_trains_a_run_at_least_as_private_as_its_pin(server, tiny_model_dir, tmp_path):
    node = pinned_context(tmp_path / "state", tiny_model_dir, **PIN_Z1)
    reply = client_app.train(dp_train_message(server, 2.0), node)
    assert wire.read_update(reply.content, 0).privacy["noise_multiplier"] == 2.0


def test_a_config_that_looks_strong_does_not_hide_the_noise_planned_at_join(server, tiny_model_dir, tmp_path):
    """The server asks which client the node serves with z = 0.3 (the client plans it and keeps it in its private
    state), then sends z = 2 to train: the node compares the noise it would add, and refuses."""
    from client.privacy_policy import WeakerPrivacy

    node = pinned_context(tmp_path / "state", tiny_model_dir, **PIN_Z1)
    client_app.query(query_message(server, dp_run(server, 0.3), wire.DESCRIBE), node)
    client_app.local_client.cache_clear()  # a new ClientApp process, as Flower starts for every message
    with pytest.raises(
        WeakerPrivacy,
        match=r"the server sends 2, but the client's private state for this run keeps "
        r"z = 0.3;",
    ):
        client_app.train(dp_train_message(server, 2.0), node)


def test_a_privacy_refusal_is_that_clients_failure_on_the_server(server, tiny_model_dir, tmp_path):
    config, global_adapter, digest = server
    node_config = pinned_context(
        tmp_path / "state", tiny_model_dir, **{"dp-mechanism": "update", "dp-target-epsilon": 4.0}
    )

    def node(node_id: int, message: Message):
        if message.metadata.message_type == wire.QUERY:
            return wire.info_content(0, 5, None)
        try:
            return client_app.train(message, node_config).content
        except Exception as exc:  # reported the way flwr-clientapp reports a ClientApp's exception
            return Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(exc)}:<'{exc}'>")

    fleet = Fleet(
        StubGrid([100], node), config.to_dict(), wait_for_nodes_s=5, round_timeout_s=60, query_timeout_s=5, poll_s=0.01
    )
    (result,) = fleet.fit_all(fleet.join(RUN_ID, 1, digest), global_adapter, 1, {})
    assert isinstance(result, RuntimeError)
    assert "client.local_dp: this node pins true (dp-mechanism=update), the server sends false" in str(result)
