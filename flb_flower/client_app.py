"""The ClientApp: one SuperNode trains one partition with the same SFTClient as the in-process run.

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
epsilon report. Flower 1.41 starts a fresh ClientApp process per message, so the model and client are built once
per process and the client state is read back from `state-dir`.
"""

from __future__ import annotations

import functools
import logging
import re
import tempfile
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from flb_flower import wire

app = ClientApp()
log = logging.getLogger(__name__)
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a run directory's name: one folder under state-dir


@app.query()
def query(message: Message, context: Context) -> Message:
    """`describe`: which client this node is, its example count and signing address (what round 0 registers);
    `upload`: its data upload, signed for the run's contract. A node whose base model is not the server's says so
    here, before round 0 records anything of it."""
    from client.privacy_policy import PrivacyPolicy

    run = wire.read_run(message.content)
    PrivacyPolicy.from_node_config(context.node_config)  # a malformed pin fails before the node joins
    client = local_client(run["config"], run["run_id"], *_node_settings(context))
    _check_base_model(client.model, run["base_model"], str(context.node_config.get("model-path", "")))
    if run["action"] == wire.UPLOAD:
        _bind(client, run["domain"])
        return Message(wire.upload_content(client.data_upload()), reply_to=message)
    return Message(wire.info_content(client.client_id, client.num_examples, client.address), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    run = wire.read_run(message.content)
    client = local_client(run["config"], run["run_id"], *_node_settings(context))
    _check_base_model(client.model, run["base_model"], str(context.node_config.get("model-path", "")))
    _check_privacy_pin(context.node_config, run["config"], client)
    _bind(client, run["domain"])
    update = client.fit(wire.read_adapter(message.content), run["round"], wire.read_adapter(message.content, "extras"))
    return Message(wire.update_content(update), reply_to=message)


def _bind(client, domain: dict | None) -> None:
    from flb.audit.attestation import SigningDomain

    if domain is not None:
        client.bind_ledger(SigningDomain.from_dict(domain))


def _check_base_model(model, server_digest: str, node_model_path: str) -> None:
    """Refuse to train a base model other than the server's: the update would belong to another model."""
    from flb.errors import ModelError
    from flb.model.load import base_model_digest

    digest = base_model_digest(model)
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


def _node_settings(context: Context) -> tuple[int, int, str, str, str, str]:
    node = context.node_config
    if "partition-id" not in node or "num-partitions" not in node:
        raise ValueError(
            "node config: partition-id and num-partitions are required; start the SuperNode with "
            '--node-config "partition-id=0 num-partitions=2"'
        )
    partition_id = int(node["partition-id"])
    state_dir = str(node.get("state-dir", Path(tempfile.gettempdir()) / f"flb-node-{partition_id}"))
    return (
        partition_id,
        int(node["num-partitions"]),
        str(node.get("data-path", "")),
        state_dir,
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
    """The model (loaded once per process, from model-path when the node has its own copy) and this node's
    SFTClient, built exactly as main_simple_fl builds them, its secrets in state-dir/<run id>/."""
    import json

    import assembly
    from flb.config import config_from_dict
    from flb.errors import ConfigError, ModelError

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
    run_state = Path(state_dir) / run_id
    return assembly.build_client(
        config,
        partition_id,
        shard,
        model,
        tokenizer,
        work_dir=run_state / "work",
        private_dir=run_state / "private",
        keystore=_signing_keystore(config, keystore),
    )


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
