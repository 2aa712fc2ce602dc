"""What a SuperNode does with a message: one node trains one partition with the same SFTClient as the in-process run.
The node's worker (flb_flower.node_worker) calls `answer` for each message its ClientApp hands over, so the model
and client built for a run stay loaded from one message to the next.

Node config: `partition-id` (this node's client id), `num-partitions` (must equal the config's num_clients),
optional `data-path` (this node's own data file, used whole instead of its partition of dataset_name),
`state-dir` (where this node keeps its secrets: its secret generator, privacy accountant, salts and run
signing key, one folder per run; default: a folder in the system's temporary directory, so set it on a real
node), `keystore` (under chain.client_keys persistent, the encrypted keystore to sign with, its password in
FLB_KEYSTORE_PASSWORD; under fresh the node signs with a key made for the run in the state folder), `model-path`
(this node's own copy of the base model, in place of the server's model.model_path; each train message carries
the digest of the server's base model and the node refuses to train one with another digest) and the dp-* keys
of client.privacy_policy (the local DP this node pins: it refuses to train a run whose client.dp is weaker). None
of these ever leaves the node: the server receives updates, signatures, the signing address and the client's own
epsilon report.
"""

from __future__ import annotations

import functools
import logging
import re
import tempfile
from pathlib import Path

from flwr.app import RecordDict

from flb_flower import wire

log = logging.getLogger(__name__)
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a run directory's name: one folder under state-dir


def answer(message_type: str, content: RecordDict, node_config: dict) -> RecordDict:
    """The reply's content to a message of `message_type` (wire.QUERY or wire.TRAIN)."""
    if message_type == wire.QUERY:
        return query(content, node_config)
    if message_type == wire.TRAIN:
        return train(content, node_config)
    raise ValueError(f"message type {message_type!r}: a node answers {wire.QUERY!r} and {wire.TRAIN!r} messages")


def query(content: RecordDict, node_config: dict) -> RecordDict:
    """`describe`: which client this node is, its example count and signing address (what round 0 registers);
    `upload`: its data upload, signed for the run's contract. A node whose base model is not the server's says so
    here, before round 0 records anything of it."""
    from client.privacy_policy import PrivacyPolicy

    run = wire.read_run(content)
    PrivacyPolicy.from_node_config(node_config)  # a malformed pin fails before the node joins
    client, base_model = local_client(run["config"], run["run_id"], *_node_settings(node_config))
    _check_base_model(base_model, run["base_model"], str(node_config.get("model-path", "")))
    if run["action"] == wire.UPLOAD:
        _bind(client, run["domain"])
        return wire.upload_content(client.data_upload())
    return wire.info_content(client.client_id, client.num_examples, client.address)


def train(content: RecordDict, node_config: dict) -> RecordDict:
    run = wire.read_run(content)
    client, base_model = local_client(run["config"], run["run_id"], *_node_settings(node_config))
    _check_base_model(base_model, run["base_model"], str(node_config.get("model-path", "")))
    _check_privacy_pin(node_config, run["config"], client)
    _bind(client, run["domain"])
    update = client.fit(client.received(wire.read_adapter(content)), run["round"], wire.read_adapter(content, "extras"))
    return wire.update_content(update)


def _bind(client, domain: dict | None) -> None:
    from flb.audit.attestation import SigningDomain

    if domain is not None:
        client.bind_ledger(SigningDomain.from_dict(domain))


def _check_base_model(digest: str, server_digest: str, node_model_path: str) -> None:
    """Refuse to train a base model (its digest) other than the server's: the update would belong to another
    model."""
    from flb.errors import ModelError

    if digest != server_digest:
        source = f"node config model-path={node_model_path!r}" if node_model_path else "model.model_path on this node"
        theirs = f"{server_digest[:16]}..." if server_digest else "not sent"
        raise ModelError(
            f"{source} holds a base model with digest {digest[:16]}..., the server's is {theirs}; "
            "point model-path at a copy of the server's base model"
        )


def _check_privacy_pin(node_config, config_json: str, client) -> None:
    """Refuse to train when the run's client DP, or the noise the client would add (its private state restored), is
    weaker than what this node pins (its dp-* node config keys): without the pin a server could switch this node's
    noise off. The refusal is this client's failure on the server."""
    import json

    from client.privacy_policy import PrivacyPolicy, WeakerPrivacy, weakening
    from flb.config import config_from_dict

    policy = PrivacyPolicy.from_node_config(node_config)
    if policy is None:
        return
    weaker = weakening(policy, config_from_dict(json.loads(config_json)), client.privacy)
    if weaker is not None:
        log.error("not training: %s", weaker)
        raise WeakerPrivacy(str(weaker))


def node_state_dir(node: dict) -> Path:
    """The node config's state-dir, or a folder in the system's temporary directory named by its partition-id."""
    return Path(node.get("state-dir", Path(tempfile.gettempdir()) / f"flb-node-{node.get('partition-id', 0)}"))


def _node_settings(node: dict) -> tuple[int, int, str, str, str, str]:
    if "partition-id" not in node or "num-partitions" not in node:
        raise ValueError(
            "node config: partition-id and num-partitions are required; start the SuperNode with "
            '--node-config "partition-id=0 num-partitions=2"'
        )
    return (
        int(node["partition-id"]),
        int(node["num-partitions"]),
        str(node.get("data-path", "")),
        str(node_state_dir(node)),
        str(node.get("keystore", "")),
        str(node.get("model-path", "")),
    )


@functools.lru_cache(maxsize=1)
def local_client(
    config_json: str,
    run_id: str,
    partition_id: int,
    num_partitions: int,
    data_path: str,
    state_dir: str,
    keystore: str,
    model_path: str,
):
    """This node's SFTClient, built exactly as main_simple_fl builds it, its secrets in state-dir/<run id>/ (its
    private state is read back from there, so a worker started again, a restarted node, goes on where the last one
    stopped), and the digest of its base model (flb.model.load.base_model_digest): both made once per run in the
    node's worker, the model loaded from model-path when the node has its own copy."""
    import json

    import assembly
    from flb.config import config_from_dict
    from flb.errors import ConfigError, ModelError
    from flb.model.load import base_model_digest

    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"run id {run_id!r} from the server is not a plain folder name; this node keeps its state only "
            f"in folders directly under state-dir={state_dir}"
        )
    assembly.configure_logging()
    settings = json.loads(config_json)
    if model_path:
        settings["model"]["model_path"] = model_path
    config = config_from_dict(settings)
    if num_partitions != config.num_clients or not 0 <= partition_id < num_partitions:
        raise ConfigError(
            f"node config: partition-id={partition_id} num-partitions={num_partitions} does not fit "
            f"num_clients={config.num_clients}; set num-partitions={config.num_clients} and "
            f"partition-id in 0..{config.num_clients - 1}"
        )
    shard = _own_records(data_path) if data_path else assembly.build_data(config)[0][partition_id]
    try:
        tokenizer, model = assembly.build_model(config)
    except ModelError as exc:
        if not model_path:
            raise
        raise ModelError(f"node config model-path: {exc}") from None
    log.info("loaded the base model for run %s, client %d", run_id, partition_id)
    run_state = Path(state_dir) / run_id
    client = assembly.build_client(
        config,
        partition_id,
        shard,
        model,
        tokenizer,
        work_dir=run_state / "work",
        private_dir=run_state / "private",
        keystore=_signing_keystore(config, keystore),
    )
    return client, base_model_digest(model)


def _signing_keystore(config, keystore: str) -> Path | None:
    """The node config's keystore under chain.client_keys persistent; None (a key made for the run in state-dir)
    under fresh, which unlinks this node's runs."""
    from flb.audit.keystore import node_keystore

    if not config.chain_record:
        return None
    chosen = node_keystore(config.chain, keystore)
    if keystore and chosen is None:
        log.info(
            "chain.client_keys is fresh: signing with a key made for this run in state-dir, not node config "
            "keystore=%r (used under persistent only)",
            keystore,
        )
    return chosen


def _own_records(data_path: str) -> list[dict]:
    from flb.data.load import load_records, normalize

    return normalize(load_records(data_path))
