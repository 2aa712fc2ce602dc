"""What the Flower messages carry (flb_flower/wire.py) and how the fleet reads replies (flb_flower/fleet.py),
without a SuperLink: a client's secrets never travel, and a malformed reply is a rejection with its reason.

The fleet's grid is a transport stub (the SuperLink's part: node ids, push, pull); the fleet, the wire format
and the client are the real ones."""

from __future__ import annotations

import dataclasses
import json
import math
import time

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

import assembly
from client.privacy import GaussianUpdate
from flb.audit.attestation import SigningDomain
from flb.audit.digests import adapter_digest, update_content
from flb.audit.keystore import RUN_KEY_FILE
from flb.config import ScaffoldSettings, load_config
from flb.errors import ClientUnavailable, RunFailed, UpdateRejected
from flb.model.load import get_adapter_state
from flb.privacy.accounting import NoisePlan
from flb.privacy.private_state import OPENINGS, PrivateState
from flb.types import ClientUpdate, RoundDeadline, SignedUpload
from flb_flower import wire
from flb_flower.fleet import Fleet
from server.strategy.scaffold import Scaffold
from server.validation import Expected, validate_update

DOMAIN = SigningDomain(31337, "0x" + "ab" * 20)
RUN_ID = "20260101-000000-abcd"
BASE_MODEL = "ef" * 32  # a base model digest, as flb.model.load.base_model_digest gives


# --- no secret travels -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_client(tiny_model_dir, tmp_path_factory):
    """A real SFTClient with local DP and a signing key, fitted once: (config, client, global adapter, update)."""
    work = tmp_path_factory.mktemp("wire")
    config = load_config(
        None,
        [
            f"model.model_path={tiny_model_dir}",
            f"output_dir={work / 'runs'}",
            "num_clients=2",
            "clients_per_round=2",
            "local_steps=2",
            "sft.max_length=96",
            "eval.size=4",
            "chain_record=true",
            "client.local_dp=true",
            "client.dp.mode=update",
        ],
    )
    shards, _ = assembly.build_data(config)
    tokenizer, model = assembly.build_model(config)
    client = assembly.build_client(
        config, 0, shards[0], model, tokenizer, work_dir=work / "work", private_dir=work / "private"
    )
    client.bind_ledger(DOMAIN)
    global_adapter = get_adapter_state(model)
    return config, client, global_adapter, client.fit(global_adapter, 1)


def client_secrets(private_dir) -> dict[str, str]:
    """Every secret in a client's private directory, as hex: generator keys, the signing key, commitment salts."""
    secrets = {"generator key": PrivateState(private_dir).latest()["random"]["key"]}
    secrets["signing key"] = (private_dir / RUN_KEY_FILE).read_text().strip().removeprefix("0x")
    secrets |= {
        f"salt of {opening['what']}": opening["salt"]
        for opening in json.loads((private_dir / OPENINGS).read_text()).values()
    }
    return secrets


def payload(content: RecordDict) -> tuple[str, bytes]:
    """Every config value as text, and every array's bytes."""
    texts = "\n".join(str(value) for record in content.config_records.values() for value in record.values())
    arrays = b"".join(array.data for record in content.array_records.values() for array in record.values())
    return texts, arrays


def test_no_secret_of_the_client_is_in_any_message(private_client):
    config, client, global_adapter, update = private_client
    messages = {
        "train": wire.train_content(config.to_dict(), RUN_ID, global_adapter, 1, DOMAIN.to_dict(), BASE_MODEL, {}),
        "query": wire.query_content(config.to_dict(), RUN_ID, wire.UPLOAD, DOMAIN.to_dict()),
        "describe reply": wire.info_content(client.client_id, client.num_examples, client.address),
        "upload reply": wire.upload_content(client.data_upload()),
        "train reply": wire.update_content(update),
    }
    secrets = client_secrets(client.private_dir)
    assert len(secrets) == 3 and update.privacy["epsilon"] > 0  # the generator's key, the signing key, a salt
    for name, content in messages.items():
        texts, arrays = payload(content)
        for what, secret in secrets.items():
            assert secret.lower() not in texts.lower() and bytes.fromhex(secret) not in texts.encode() + arrays, (
                f"{what} is in the {name} message"
            )


def test_no_accountant_or_generator_state_is_in_any_message(private_client):
    """The reply carries the client's epsilon report (its history is public by design), not its private state."""
    config, client, global_adapter, update = private_client
    state = PrivateState(client.private_dir).latest()
    contents = [
        wire.train_content(config.to_dict(), RUN_ID, global_adapter, 1, DOMAIN.to_dict(), BASE_MODEL, {}),
        wire.update_content(update),
    ]
    for content in contents:
        texts, _ = payload(content)
        for key in ('"random"', '"position"', '"accountant"', '"data_record"'):
            assert key not in texts
        assert json.dumps(state["privacy"]) not in texts and json.dumps(state["random"]) not in texts
    train_texts, _ = payload(contents[0])
    assert '"history"' not in train_texts  # the server sends the client nothing of its accounting


def test_a_train_reply_reads_back_as_the_update_sent(private_client):
    _, _, _, update = private_client
    read = wire.read_update(wire.update_content(update), update.client_id)
    assert read.train_loss is None  # stays with the client under local DP
    assert (read.digest, read.attestation, read.privacy, read.num_examples) == (
        update.digest,
        update.attestation,
        update.privacy,
        update.num_examples,
    )
    assert adapter_digest(read.tensors) == update.digest


# --- malformed replies ---------------------------------------------------------------------------


def plain_update(privacy: dict | None = None) -> ClientUpdate:
    tensors = {"lora_A": torch.ones(2, 3), "lora_B": torch.zeros(3, 2)}
    return ClientUpdate(
        client_id=0,
        round=1,
        tensors=tensors,
        num_examples=5,
        train_loss=0.5,
        wall_time_s=1.0,
        num_bytes=48,
        digest=adapter_digest(tensors),
        privacy=privacy or {},
    )


def test_compressed_payloads_cross_flowers_arrays_bit_for_bit():
    """numpy, so Flower's arrays, has no bfloat16: a bf16 payload crosses as its raw bytes; the codes of the other
    codecs are numpy dtypes. Through Flower's own serialisation, both ways."""
    from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

    from flb.adapters.compression import encode
    from flb.config.sections import BROADCAST_CODECS

    adapter = {"lora_A": torch.randn(2, 3), "lora_B": torch.randn(3, 65)}
    for codec in ("bf16", "int8", "nf4", "topk"):
        sent = encode(codec, adapter, topk_fraction=0.5)
        update = dataclasses.replace(plain_update(), tensors=sent, digest=adapter_digest(sent))
        back = wire.read_update(recorddict_from_proto(recorddict_to_proto(wire.update_content(update))), 0)
        assert back.tensors.keys() == sent.keys() and back.digest == adapter_digest(back.tensors), codec
        if codec in BROADCAST_CODECS:
            config = {"comm": {"broadcast_compression": codec}}
            content = wire.train_content(config, RUN_ID, adapter, 1, None, BASE_MODEL, {})
            received = wire.read_adapter(recorddict_from_proto(recorddict_to_proto(content)))
            assert adapter_digest(received) == adapter_digest(sent), codec


def privacy_report() -> dict:
    mechanism = GaussianUpdate(
        clip_norm=1.0,
        delta=1e-5,
        plan=NoisePlan(noise_multiplier=1.0, target_epsilon=None, num_rounds=2, steps_per_round=1),
    )
    mechanism.accountant.step(noise_multiplier=1.0, sample_rate=1.0)
    return mechanism.privacy_spent()


def with_result(**changes) -> RecordDict:
    """A well-formed train reply with some result values replaced (None: the value removed)."""
    content = wire.update_content(plain_update(privacy_report()))
    result = content.config_records["result"]
    for key, value in changes.items():
        key = key.replace("_", "-")
        if value is None:
            del result[key]
        else:
            result[key] = value
    return content


def without(record: str) -> RecordDict:
    content = wire.update_content(plain_update())
    return RecordDict({name: rec for name, rec in content.items() if name != record})


def with_arrays(array: Array, record: str = "update") -> RecordDict:
    content = wire.update_content(plain_update())
    return RecordDict({**content, record: ArrayRecord({"lora_A": array})})


MALFORMED = {
    "no digest": lambda: with_result(digest=None),
    "privacy not JSON": lambda: with_result(privacy="{not json"),
    "privacy not an object": lambda: with_result(privacy="[1, 2]"),
    "privacy without a mechanism": lambda: with_result(privacy=json.dumps({"epsilon": 1.0})),
    "privacy epsilon is text": lambda: with_result(privacy=json.dumps({**privacy_report(), "epsilon": "1"})),
    "num-examples text": lambda: with_result(num_examples="abc"),
    "num-examples NaN": lambda: with_result(num_examples=math.nan),
    "num-examples 1.5": lambda: with_result(num_examples=1.5),
    "client-id text": lambda: with_result(client_id="0"),
    "round missing": lambda: with_result(round=None),
    "wall time infinite": lambda: with_result(wall_time_s=math.inf),
    "signature not text": lambda: with_result(
        **{"recorded_digest": "00" * 32, "recorded_num_examples": 5, "signature": 7}
    ),
    "no result record": lambda: without("result"),
    "no update arrays": lambda: without("update"),
    "array bytes short of its shape": lambda: with_arrays(
        Array(dtype="float32", shape=(-1,), stype="numpy.ndarray", data=b"")
    ),
    "array of text": lambda: with_arrays(Array(np.array(["abc", "d"]))),
    "extras of text": lambda: with_arrays(Array(np.array(["abc", "d"])), "extras"),
    "no extras record": lambda: without("extras"),
}


def test_a_well_formed_reply_reads_back():
    update = wire.read_update(wire.update_content(plain_update(privacy_report())), 0)
    assert update.privacy == privacy_report() and update.num_examples == 5 and update.train_loss == 0.5


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_reply_is_rejected_with_its_reason(case):
    with pytest.raises(UpdateRejected, match=r"^client 0: malformed reply \(\w+: .+\)$"):
        wire.read_update(MALFORMED[case](), 0)


# --- the fleet reading replies from nodes --------------------------------------------------------


@pytest.fixture
def server_task(monkeypatch):
    """The ServerApp's task identity, which Flower sets before a ServerApp creates messages."""
    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


class StubGrid:
    """The SuperLink's part of a Grid (node ids, push, pull) in memory: node `n` answers each message with
    `answer(n, message)`, a RecordDict, an Error, or None (no reply)."""

    def __init__(self, node_ids: list[int], answer):
        self.node_ids, self.answer = node_ids, answer
        self.pushed: list[Message] = []
        self.replies: dict[str, Message] = {}

    def get_node_ids(self):
        return list(self.node_ids)

    def push_messages(self, messages):
        ids = []
        for message in messages:
            message_id = f"message-{len(self.pushed)}"
            message.metadata.__dict__["_message_id"] = message_id  # as Flower's InMemoryGrid does
            self.pushed.append(message)
            answer = self.answer(message.metadata.dst_node_id, message)
            if answer is not None:
                self.replies[message_id] = Message(answer, reply_to=message)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]


def node_answers(train_reply):
    """A node that says it serves client (node id - 100) and answers train messages with `train_reply(client)`."""

    def answer(node: int, message: Message):
        client_id = node - 100
        if message.metadata.message_type == wire.QUERY:
            return wire.info_content(client_id, 5, None)
        return train_reply(client_id)

    return answer


def fleet_over(grid: StubGrid, config: dict | None = None) -> Fleet:
    return Fleet(
        grid,
        config or {"num_clients": len(grid.node_ids), "comm": {"broadcast_compression": "none"}},
        wait_for_nodes_s=5,
        round_timeout_s=0.5,
        query_timeout_s=0.5,
        poll_s=0.01,
    )


def test_the_fleet_turns_every_malformed_reply_into_a_rejection(server_task):
    cases = list(MALFORMED)
    grid = StubGrid([100 + i for i in range(len(cases))], node_answers(lambda client: MALFORMED[cases[client]]()))
    fleet = fleet_over(grid)
    results = fleet.fit_all(fleet.join(RUN_ID, len(cases), BASE_MODEL), plain_update().tensors, 1, {})
    for case, result in zip(cases, results):
        assert isinstance(result, UpdateRejected) and "malformed reply" in str(result), case


def test_the_fleet_passes_on_a_well_formed_update_and_the_clients_epsilon(server_task):
    grid = StubGrid([100], node_answers(lambda client: wire.update_content(plain_update(privacy_report()))))
    fleet = fleet_over(grid)
    (client,) = fleet.join(RUN_ID, 1, BASE_MODEL)
    (update,) = fleet.fit_all([client], plain_update().tensors, 1, {})
    assert update.digest == plain_update().digest and client.privacy_spent() == privacy_report()


def test_a_node_the_superlink_reports_gone_is_unavailable_not_a_failure(server_task):
    gone = Error(code=ErrorCode.NODE_UNAVAILABLE, reason="Error: Node Unavailable")
    fleet = fleet_over(StubGrid([100], node_answers(lambda client: gone)))
    (result,) = fleet.fit_all(fleet.join(RUN_ID, 1, BASE_MODEL), plain_update().tensors, 1, {})
    assert isinstance(result, ClientUnavailable) and "unavailable in round 1" in str(result)
    assert fleet.nodes == {}  # asked again only once the SuperLink lists a node for it anew


def test_a_node_that_never_replies_is_unavailable(server_task):
    fleet = fleet_over(StubGrid([100], node_answers(lambda client: None)))
    (result,) = fleet.fit_all(fleet.join(RUN_ID, 1, BASE_MODEL), plain_update().tensors, 1, {})
    assert isinstance(result, ClientUnavailable) and "sent no reply in round 1" in str(result)


def test_a_node_silent_at_the_rounds_deadline_is_late_and_stays_known(server_task):
    """Node 101 has not answered when the deadline closes the round (the others are in): it is slow, not gone, so
    the fleet keeps it for the next round; before the deadline the round waits for it."""
    answer = node_answers(lambda client: None if client == 1 else wire.update_content(plain_update()))
    fleet = fleet_over(StubGrid([100, 101, 102], answer))
    fleet.round_timeout_s = 10.0
    clients = fleet.join(RUN_ID, 3, BASE_MODEL)
    started = time.monotonic()
    results = fleet.fit_all(clients, plain_update().tensors, 1, {}, RoundDeadline(time.monotonic() + 0.3, needed=2))
    assert 0.3 <= time.monotonic() - started < 5  # the deadline with enough updates, not round-timeout-s
    assert [type(r).__name__ for r in results] == ["ClientUpdate", "ClientLate", "ClientUpdate"]
    assert str(results[1]) == "client 1: still training when the round closed at its deadline"
    assert 1 in fleet.nodes
    fleet.round_timeout_s = 0.5
    (result,) = fleet.fit_all([clients[1]], plain_update().tensors, 2, {}, RoundDeadline(time.monotonic(), needed=1))
    assert isinstance(result, ClientUnavailable)  # with too few updates in, round-timeout-s still decides


def test_a_malformed_data_upload_fails_the_run_in_one_line(server_task):
    def answer(node: int, message: Message):
        if wire.read_run(message.content)["action"] == wire.UPLOAD:
            return RecordDict({"upload": ConfigRecord({"recorded-digest": 5})})
        return wire.info_content(0, 5, "0x" + "cd" * 20)

    fleet = fleet_over(StubGrid([100], answer))
    (client,) = fleet.join(RUN_ID, 1, BASE_MODEL)
    with pytest.raises(RunFailed, match=r"^client 0: its SuperNode sent a malformed data upload \(.+\)$"):
        client.data_upload()


def test_a_well_formed_data_upload_reads_back(server_task):
    signed = SignedUpload("11" * 32, "0x" + "22" * 65)

    def answer(node: int, message: Message):
        return (
            wire.upload_content(signed)
            if wire.read_run(message.content)["action"] == wire.UPLOAD
            else wire.info_content(0, 5, "0x" + "cd" * 20)
        )

    fleet = fleet_over(StubGrid([100], answer))
    (client,) = fleet.join(RUN_ID, 1, BASE_MODEL)
    assert client.data_upload() == signed and client.address == "0x" + "cd" * 20


def test_nodes_receive_the_config_without_url_credentials(server_task):
    config = {
        "num_clients": 1,
        "comm": {"broadcast_compression": "none"},
        "chain": {"backend": "rpc", "rpc_url": "https://alice:hunter2@rpc.example/v1"},
    }
    grid = StubGrid([100], node_answers(lambda client: wire.update_content(plain_update())))
    fleet = fleet_over(grid, config)
    fleet.fit_all(fleet.join(RUN_ID, 1, BASE_MODEL), plain_update().tensors, 1, {})
    assert grid.pushed and all("hunter2" not in payload(m.content)[0] for m in grid.pushed)
    assert all("rpc.example/v1" in payload(m.content)[0] for m in grid.pushed)


# --- the strategy's extras: SCAFFOLD's control variates --------------------------------------------


def test_scaffold_variates_travel_both_ways_bit_for_bit(server_task):
    """The server's c goes out with the train message, the client's delta c_i comes back in its reply, and the
    update read back passes validation against what was sent."""
    global_adapter = plain_update().tensors
    strategy = Scaffold(ScaffoldSettings(server_learning_rate=1.0), num_clients=2)
    strategy.load_state_dict(
        {"variate": {"lora_A": torch.linspace(-1, 1, 6).reshape(2, 3), "lora_B": torch.linspace(3, 4, 6).reshape(3, 2)}}
    )
    server_variate = strategy.client_extras(global_adapter)
    client_delta = {name: tensor / 7 - 1e-3 for name, tensor in server_variate.items()}
    received = []

    def answer(node: int, message: Message):
        if message.metadata.message_type == wire.QUERY:
            return wire.info_content(0, 5, None)
        received.append(wire.read_adapter(message.content, "extras"))  # as the ClientApp reads it
        update = plain_update()
        digest = adapter_digest(update_content(update.tensors, client_delta))
        return wire.update_content(dataclasses.replace(update, extras=client_delta, digest=digest))

    fleet = fleet_over(StubGrid([100], answer))
    (update,) = fleet.fit_all(fleet.join(RUN_ID, 1, BASE_MODEL), global_adapter, 1, server_variate)
    assert adapter_digest(received[0]) == adapter_digest(server_variate)
    assert adapter_digest(update.extras) == adapter_digest(client_delta)
    validate_update(
        update,
        Expected(client_id=0, round=1, max_examples=5),
        global_adapter,
        adapter_digest(global_adapter),
        server_variate,
    )


def test_a_run_starts_with_the_nodes_that_joined_and_takes_in_a_late_one(server_task):
    """Nodes for clients 0 and 1 are up, client 2's is not: after wait-for-nodes-s the fleet starts with two (at
    least min_joined), declares nothing for client 2, and takes it in once its node joins, asking only that node for
    its data upload; with fewer than min_joined it fails in one line."""

    def answer(node: int, message: Message):
        if wire.read_run(message.content)["action"] == wire.UPLOAD:
            return wire.upload_content(SignedUpload("ab" * 32, "0x" + "cd" * 65))
        return wire.info_content(node - 100, 5, None)

    grid = StubGrid([100, 101], answer)
    fleet = fleet_over(grid, {"num_clients": 3, "comm": {"broadcast_compression": "none"}})
    fleet.wait_for_nodes_s = 0.2
    with pytest.raises(RunFailed, match=r"^no SuperNode serves partition-id \[2\]") as error:
        fleet.join(RUN_ID, 3, BASE_MODEL)
    assert "\n" not in str(error.value)
    clients = fleet.join(RUN_ID, 3, BASE_MODEL, min_joined=2)
    assert [(c.client_id, c.num_examples) for c in clients] == [(0, 5), (1, 5), (2, 0)]
    assert [c.client_id for c in fleet.roster()] == [0, 1]
    fleet.data_upload(0)
    asked = len(grid.pushed)
    grid.node_ids.append(102)
    assert [c.client_id for c in fleet.roster()] == [0, 1, 2] and clients[2].num_examples == 5
    fleet.data_upload(2)
    uploads = [m for m in grid.pushed[asked:] if wire.read_run(m.content)["action"] == wire.UPLOAD]
    assert [m.metadata.dst_node_id for m in uploads] == [102]  # the others signed theirs already
