"""sha256 digests over a canonical serialization. One function for adapters, whether they are in
memory, in a safetensors file or anchored on chain, so anyone can check a file against the chain."""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Iterable

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
