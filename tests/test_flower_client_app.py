"""The ClientApp's node config (flb_flower/client_app.py), called in-process with real Flower messages: a node
trains its own copy of the base model (`model-path`) only when it is the server's."""
from __future__ import annotations

import shutil

import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity
from safetensors.torch import load_file, save_file

import main_simple_fl
from flb.config import load_config
from flb.errors import ModelError
from flb.modeling import base_model_digest, get_adapter_state
from flb_flower import client_app, wire
from flb_flower.fleet import Fleet
from tests.test_flower_wire import StubGrid
from tests.tiny_model import tiny_run_overrides

RUN_ID = "20260101-000000-abcd"


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """The server's config, its initial global adapter and the digest of its base model."""
    config = load_config(None, tiny_run_overrides(tiny_model_dir, tmp_path_factory.mktemp("runs")) + ["local_steps=1"])
    _, model = main_simple_fl.build_model(config)
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
    content = wire.train_content(config.to_dict(), RUN_ID, global_adapter, 1, None,
                                 digest if base_model_digest is None else base_model_digest, {})
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
    with pytest.raises(ModelError, match=r"^node config model-path='.+/other-model' holds a base model with digest "
                                         r"[0-9a-f]{16}\.\.\., the server's is [0-9a-f]{16}\.\.\.; point model-path "
                                         r"at a copy of the server's base model$"):
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

    fleet = Fleet(StubGrid([100], node), config.to_dict(), wait_for_nodes_s=5, round_timeout_s=60, query_timeout_s=5,
                  poll_s=0.01)
    (result,) = fleet.fit_all(fleet.join(RUN_ID, 1, digest), global_adapter, 1, {})
    assert isinstance(result, RuntimeError) and "holds a base model with digest" in str(result)


def test_a_node_with_a_different_base_model_does_not_even_say_which_client_it_serves(server, other_model, tmp_path):
    """Refused at the first query, the node never joins: round 0 records no data upload of a client that could not
    train the server's model."""
    config, _, digest = server
    query = Message(wire.query_content(config.to_dict(), RUN_ID, wire.DESCRIBE, None, digest), dst_node_id=7,
                    message_type=wire.QUERY)
    with pytest.raises(ModelError, match="holds a base model with digest"):
        client_app.query(query, node_context(tmp_path / "state", other_model))


def test_a_node_refuses_a_train_message_without_the_servers_digest(server, tiny_model_dir, tmp_path):
    with pytest.raises(ModelError, match=r"the server's is not sent;"):
        client_app.train(train_message(server, ""), node_context(tmp_path / "state", tiny_model_dir))


def test_a_missing_model_path_names_the_node_config_key(server, tmp_path):
    with pytest.raises(ModelError, match=r"^node config model-path: model\.model_path: .+/absent' does not exist"):
        client_app.train(train_message(server), node_context(tmp_path / "state", tmp_path / "absent"))
