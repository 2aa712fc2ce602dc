"""What travels between the ServerApp and the ClientApps: the run config as JSON, adapter tensors as Flower
arrays, and an update's numbers in a ConfigRecord. Nothing is pickled."""
from __future__ import annotations

import json

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from flb.types import AdapterState, ClientUpdate

TRAIN = "train"
QUERY = "query"


def query_content(config: dict) -> RecordDict:
    return RecordDict({"run": ConfigRecord({"config": json.dumps(config)})})


def train_content(config: dict, global_adapter: AdapterState, round: int, client_state: dict) -> RecordDict:
    return RecordDict({"global": ArrayRecord(torch_state_dict=global_adapter),
                       "run": ConfigRecord({"config": json.dumps(config), "round": round,
                                            "client-state": json.dumps(client_state)})})


def read_run(content: RecordDict) -> tuple[str, int, dict]:
    """The config JSON (kept as text: it keys the node's cache), the round and the client's state."""
    run = content.config_records["run"]
    return run["config"], int(run.get("round", 0)), json.loads(run.get("client-state", "{}"))


def read_adapter(content: RecordDict, key: str = "global") -> AdapterState:
    return dict(content.array_records[key].to_torch_state_dict())


def info_content(client_id: int, num_examples: int, data_digest: str) -> RecordDict:
    return RecordDict({"info": ConfigRecord({"client-id": client_id, "num-examples": num_examples,
                                             "data-digest": data_digest})})


def read_info(content: RecordDict) -> tuple[int, int, str]:
    info = content.config_records["info"]
    return int(info["client-id"]), int(info["num-examples"]), str(info["data-digest"])


def update_content(update: ClientUpdate, client_state: dict) -> RecordDict:
    return RecordDict({"update": ArrayRecord(torch_state_dict=update.tensors),
                       "result": ConfigRecord({"client-id": update.client_id, "round": update.round,
                                               "num-examples": update.num_examples, "train-loss": update.train_loss,
                                               "wall-time-s": update.wall_time_s, "num-bytes": update.num_bytes,
                                               "digest": update.digest, "privacy": json.dumps(update.privacy),
                                               "client-state": json.dumps(client_state)})})


def read_update(content: RecordDict) -> tuple[ClientUpdate, dict]:
    """The ClientUpdate and the client's new state (its privacy accountant) from a train reply."""
    result = content.config_records["result"]
    update = ClientUpdate(client_id=int(result["client-id"]), round=int(result["round"]),
                          tensors=read_adapter(content, "update"), num_examples=int(result["num-examples"]),
                          train_loss=float(result["train-loss"]), wall_time_s=float(result["wall-time-s"]),
                          num_bytes=int(result["num-bytes"]), digest=str(result["digest"]),
                          privacy=json.loads(result["privacy"]))
    return update, json.loads(result["client-state"])


def payload_bytes(content: RecordDict) -> int:
    """Bytes of a message's arrays and config values (Flower's framing not counted)."""
    arrays = sum(record.count_bytes() for record in content.array_records.values())
    return arrays + sum(len(str(value)) for record in content.config_records.values() for value in record.values())
