"""sha256 digests over a canonical serialization. One function for adapters, whether they are in
memory, in a safetensors file or anchored on chain, so anyone can check a file against the chain."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from pathlib import Path

from flb.types import AdapterState


def adapter_digest(state: AdapterState) -> str:
    """Hex sha256 over sorted names, each with its dtype, shape and raw little-endian bytes."""
    import torch

    hasher = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        header = json.dumps([name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape)]).encode()
        data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        hasher.update(struct.pack("<Q", len(header)) + header + struct.pack("<Q", len(data)))
        hasher.update(data)
    return hasher.hexdigest()


EXTRAS_PREFIX = "extras/"  # no adapter tensor name starts with it


def update_content(tensors: AdapterState, extras: AdapterState) -> AdapterState:
    """All a client's update sends, as one state: its adapter and, named "extras/<name>", what its strategy returns
    beside it (SCAFFOLD's delta c_i). The update's digest, the client's signature over it and the saved update file
    cover all of it."""
    return {**tensors, **{EXTRAS_PREFIX + name: tensor for name, tensor in extras.items()}}


def adapter_file_digest(path: str | Path) -> str:
    """Digest of the tensors in a safetensors file (an adapter directory's adapter_model.safetensors)."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / "adapter_model.safetensors"
    return adapter_digest(load_file(str(path)))


def records_digest(records: Iterable[dict]) -> str:
    """Hex sha256 of a data shard: canonical JSON of each record, one per line, in order."""
    hasher = hashlib.sha256()
    for record in records:
        hasher.update(json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
        hasher.update(b"\n")
    return hasher.hexdigest()


def json_digest(value) -> str:
    """Hex sha256 of `value` as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def metrics_digest(row: dict) -> str:
    """json_digest of a metrics.jsonl row as it reads back from the file (JSON's forms of tuples, keys and floats),
    so the server's digest of the row it writes and a verifier's of the line it reads are the same."""
    return json_digest(json.loads(json.dumps(row)))


ADAPTER_CONFIG = "adapter_config.json"


def adapter_config_digest(source) -> str:
    """Hex sha256 of an adapter_config.json as canonical JSON: of a peft adapter directory, or of a peft config
    (saved the way every adapter directory of the run is). The tensors' digest says nothing of how they are
    scaled (lora_alpha / r), so this one is anchored on chain too."""
    import tempfile

    if isinstance(source, (str, Path)):
        config = json.loads((Path(source) / ADAPTER_CONFIG).read_text())
        # peft writes sets (target_modules...) in hash order, which changes from process to process
        return json_digest(
            {
                key: sorted(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else value
                for key, value in config.items()
            }
        )
    with tempfile.TemporaryDirectory() as folder:
        source.save_pretrained(folder)
        return adapter_config_digest(folder)
