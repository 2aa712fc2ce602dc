"""What travels between the ServerApp and the ClientApps: the run config as JSON, adapter tensors and the
strategy's extras (SCAFFOLD's control variates: the server's with a train message, the client's delta with its
reply) as Flower arrays, and an update's numbers, signature and the client's own epsilon report in a ConfigRecord.
Nothing is pickled, and nothing secret travels: a client's generator, accountant, salts and key stay on its node.

A reply is read defensively: whatever a node sends, reading it gives a ClientUpdate or an UpdateRejected
naming what is wrong, never another exception."""

from __future__ import annotations

import json
import math

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from flb.adapters.compression import encode
from flb.errors import UpdateRejected, first_line, shown
from flb.types import AdapterState, Attestation, ClientUpdate, SignedUpload

TRAIN = "train"
QUERY = "query"
DESCRIBE, UPLOAD = "describe", "upload"
CLIENT_MECHANISMS = ("local_update", "local_dpsgd")  # client.privacy.GaussianUpdate, client.dpsgd.DPSGD


def query_content(
    config: dict, run_id: str, action: str, domain: dict | None = None, base_model: str = ""
) -> RecordDict:
    """`base_model`: as in train_content, so a node with another base model is refused before round 0 records it."""
    return RecordDict(
        {
            "run": ConfigRecord(
                {
                    "config": json.dumps(config),
                    "run-id": run_id,
                    "action": action,
                    "domain": json.dumps(domain),
                    "base-model": base_model,
                }
            )
        }
    )


def train_content(
    config: dict,
    run_id: str,
    global_adapter: AdapterState,
    round: int,
    domain: dict | None,
    base_model: str,
    extras: AdapterState,
) -> RecordDict:
    """`base_model`: flb.model.load.base_model_digest of the server's base model; the node refuses to train another.
    `extras`: the strategy's tensors for the clients (Strategy.client_extras)."""
    return RecordDict(
        {
            "global": _arrays(encode(config["comm"]["broadcast_compression"], global_adapter)),
            "extras": _arrays(extras),
            "run": ConfigRecord(
                {
                    "config": json.dumps(config),
                    "run-id": run_id,
                    "round": round,
                    "domain": json.dumps(domain),
                    "base-model": base_model,
                }
            ),
        }
    )


def read_run(content: RecordDict) -> dict:
    """The config JSON (kept as text: it keys the node's cache), run id, round, action, signing domain and the
    server's base model digest."""
    run = content.config_records["run"]
    return {
        "config": run["config"],
        "run_id": str(run["run-id"]),
        "round": int(run.get("round", 0)),
        "action": str(run.get("action", TRAIN)),
        "domain": json.loads(run.get("domain", "null")),
        "base_model": str(run.get("base-model", "")),
    }


def read_adapter(content: RecordDict, key: str = "global") -> AdapterState:
    return {name: _tensor(array) for name, array in content.array_records[key].items()}


# numpy, and so Flower's numpy arrays, have no bfloat16 (comm.compression bf16): such a tensor travels as its raw
# little-endian bytes under this serialisation type
RAW_BFLOAT16 = "flb.raw_bfloat16"


def _arrays(tensors: AdapterState) -> ArrayRecord:
    """Tensors as Flower arrays (an empty record for none)."""
    return ArrayRecord({name: _array(tensor) for name, tensor in tensors.items()})


def _array(tensor) -> Array:
    import torch

    if tensor.dtype != torch.bfloat16:
        return Array.from_torch_tensor(tensor.detach().cpu())
    raw = tensor.detach().cpu().contiguous().view(torch.int16).numpy().tobytes()
    return Array(dtype="bfloat16", shape=tuple(tensor.shape), stype=RAW_BFLOAT16, data=raw)


def _tensor(array: Array):
    import torch

    if array.stype == RAW_BFLOAT16:
        return torch.frombuffer(bytearray(array.data), dtype=torch.bfloat16).reshape(array.shape)
    return torch.from_numpy(array.numpy())


def info_content(client_id: int, num_examples: int, address: str | None) -> RecordDict:
    return RecordDict(
        {"info": ConfigRecord({"client-id": client_id, "num-examples": num_examples, "address": address or ""})}
    )


def read_info(content: RecordDict) -> tuple[int, int, str | None]:
    """(client id, example count, signing address); KeyError, TypeError or ValueError when malformed."""
    info = content.config_records["info"]
    return _count(info["client-id"]), _count(info["num-examples"]), _text(info["address"]) or None


def upload_content(upload: SignedUpload) -> RecordDict:
    return RecordDict(
        {"upload": ConfigRecord({"recorded-digest": upload.recorded_digest, "signature": upload.signature})}
    )


def read_upload(content: RecordDict) -> SignedUpload:
    """The signed data upload; KeyError, TypeError or ValueError when malformed."""
    upload = content.config_records["upload"]
    return SignedUpload(_text(upload["recorded-digest"]), _text(upload["signature"]))


def update_content(update: ClientUpdate) -> RecordDict:
    result = {
        "client-id": update.client_id,
        "round": update.round,
        "num-examples": update.num_examples,
        "wall-time-s": update.wall_time_s,
        "num-bytes": update.num_bytes,
        "digest": update.digest,
        "privacy": json.dumps(update.privacy),
    }
    if update.train_loss is not None:
        result["train-loss"] = update.train_loss
    if update.attestation is not None:
        result.update(
            {
                "recorded-digest": update.attestation.recorded_digest,
                "recorded-num-examples": update.attestation.recorded_num_examples,
                "signature": update.attestation.signature,
            }
        )
    return RecordDict(
        {
            "update": _arrays(update.tensors),
            "extras": _arrays(update.extras),
            "result": ConfigRecord(result),
        }
    )


def read_update(content: RecordDict, client_id: int) -> ClientUpdate:
    """The ClientUpdate in a train reply; UpdateRejected naming the problem when the reply is malformed. Whether
    the update itself is acceptable (its id, round, tensors, count, signature) is server.validation's to say."""
    try:
        result = content.config_records["result"]
        tensors = read_adapter(content, "update")
        attestation = None
        if "signature" in result:
            attestation = Attestation(
                recorded_digest=_text(result["recorded-digest"]),
                recorded_num_examples=_count(result["recorded-num-examples"]),
                signature=_text(result["signature"]),
            )
        return ClientUpdate(
            client_id=_count(result["client-id"]),
            round=_count(result["round"]),
            tensors=tensors,
            num_examples=_count(result["num-examples"]),
            train_loss=_loss(result.get("train-loss")),
            wall_time_s=_seconds(result["wall-time-s"]),
            num_bytes=_count(result["num-bytes"]),
            digest=_text(result["digest"]),
            privacy=_privacy_report(result.get("privacy", "{}")),
            attestation=attestation,
            extras=read_adapter(content, "extras"),
        )
    except Exception as exc:  # whatever a node sends: numpy, torch and Flower raise many kinds on bad arrays
        raise UpdateRejected(f"client {client_id}: malformed reply ({type(exc).__name__}: {first_line(exc)})") from None


def _count(value) -> int:
    """A whole number as sent; anything else (a float, NaN, text) is refused rather than rounded."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{shown(value)} is not a whole number")
    return value


def _text(value) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{shown(value)} is not text")
    return value


def _number(value) -> float:
    """A finite number as sent (not text, not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{shown(value)} is not a finite number")
    return float(value)


def _seconds(value) -> float:
    seconds = _number(value)
    if seconds < 0:
        raise ValueError(f"{shown(value)} is not a duration")
    return seconds


def _loss(value) -> float | None:
    if value is None:
        return None
    loss = float(value)
    return loss if math.isfinite(loss) else None


def _privacy_report(text) -> dict:
    """The client's own epsilon report: {} without local DP, or a report the server can show and compose
    (a client mechanism, epsilon None or >= 0, finite delta, z, C and q, whole steps, its (z, q, steps) history).
    The server cannot check the numbers; it records them as the client's own statement."""
    report = json.loads(text)
    if not isinstance(report, dict):
        raise ValueError(f"privacy report {shown(text)} is not a JSON object")
    if not report:
        return report
    if report.get("mechanism") not in CLIENT_MECHANISMS:
        raise ValueError(f"privacy report mechanism {shown(report.get('mechanism'))} is not one of {CLIENT_MECHANISMS}")
    if report.get("epsilon") is not None and _number(report["epsilon"]) < 0:
        raise ValueError(f"privacy report epsilon {shown(report['epsilon'])} is negative")
    for key in ("delta", "noise_multiplier", "clip_norm", "sample_rate"):
        _number(report.get(key))
    _count(report.get("steps"))
    history = report.get("history")
    if not isinstance(history, list) or not all(isinstance(entry, list) and len(entry) == 3 for entry in history):
        raise ValueError("privacy report history is not a list of [z, q, steps]")
    for z, q, steps in history:
        _number(z), _number(q), _count(steps)
    return report


def payload_bytes(content: RecordDict) -> int:
    """Bytes of a message's arrays and config values (Flower's framing not counted)."""
    arrays = sum(record.count_bytes() for record in content.array_records.values())
    return arrays + sum(len(str(value)) for record in content.config_records.values() for value in record.values())
