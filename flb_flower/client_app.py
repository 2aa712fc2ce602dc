"""The ClientApp: one SuperNode trains one partition with the same SFTClient as the in-process run.

Node config: `partition-id` (this node's client id), `num-partitions` (must equal the config's num_clients),
optional `data-path` (this node's own data file, used whole instead of its partition of dataset_name).
Flower 1.41 starts a fresh ClientApp process per message, so the model and client are built once per
process; the client's privacy state comes with each train message and goes back with the reply.
"""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from flb_flower import wire

app = ClientApp()


@app.query()
def describe(message: Message, context: Context) -> Message:
    """Which client this node is, its example count and data digest (what the ledger records at round 0)."""
    config_json, _, _ = wire.read_run(message.content)
    client = local_client(config_json, *_node_settings(context))
    return Message(wire.info_content(client.client_id, client.num_examples, client.data_digest), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    config_json, round, client_state = wire.read_run(message.content)
    client = local_client(config_json, *_node_settings(context))
    client.load_state_dict(client_state)
    update = client.fit(wire.read_adapter(message.content), round)
    return Message(wire.update_content(update, client.state_dict()), reply_to=message)


def _node_settings(context: Context) -> tuple[int, int, str]:
    node = context.node_config
    if "partition-id" not in node or "num-partitions" not in node:
        raise ValueError("node config: partition-id and num-partitions are required; start the SuperNode with "
                         "--node-config \"partition-id=0 num-partitions=2\"")
    return int(node["partition-id"]), int(node["num-partitions"]), str(node.get("data-path", ""))


@functools.lru_cache(maxsize=1)
def local_client(config_json: str, partition_id: int, num_partitions: int, data_path: str):
    """The model (loaded once per process) and this node's SFTClient, built exactly as main_simple_fl builds them."""
    import json

    import main_simple_fl
    from flb.config import config_from_dict
    from flb.errors import ConfigError

    main_simple_fl.configure_logging()
    config = config_from_dict(json.loads(config_json))
    if num_partitions != config.num_clients or not 0 <= partition_id < num_partitions:
        raise ConfigError(f"node config: partition-id={partition_id} num-partitions={num_partitions} does not fit "
                          f"num_clients={config.num_clients}; set num-partitions={config.num_clients} and "
                          f"partition-id in 0..{config.num_clients - 1}")
    shard = _own_records(data_path) if data_path else main_simple_fl.build_data(config)[0][partition_id]
    tokenizer, model = main_simple_fl.build_model(config)
    work_dir = Path(tempfile.gettempdir()) / f"flb-node-{partition_id}"
    return main_simple_fl.build_client(config, partition_id, shard, model, tokenizer, work_dir)


def _own_records(data_path: str) -> list[dict]:
    from flb.data.load import load_records, normalize

    return normalize(load_records(data_path))
