"""Frames: one message of an operation, a JSON header and named tensors, as one safetensors buffer. They cross split
learning's cut (flb.split.cut, in process or over gRPC) and the pipes of the worker pool (client.workers). Only
safetensors and JSON are read back: nothing received is unpickled.

Byte format: a safetensors buffer (an 8-byte little-endian header size, the safetensors JSON header, the tensors'
bytes) whose __metadata__ holds "op", the operation, and "header", the JSON header as text. A header whose JSON is
longer than HEADER_IN_METADATA travels instead as the 1-D uint8 tensor HEADER_TENSOR (its UTF-8 JSON) and the
metadata has no "header": safetensors refuses a header over 100 MB, and a worker's first job for a client carries
the client's whole shard. Every frame split learning sends has a small header, so its bytes are as they always were.
"""

from __future__ import annotations

import json
import struct

from flb.errors import FLBError

HEADER_IN_METADATA = 1 << 20  # bytes of header JSON kept in the metadata; a longer header goes in HEADER_TENSOR
HEADER_TENSOR = "__header__"


class FrameError(FLBError, ValueError):
    """Bytes that are not a frame: truncated, corrupt, or not written by encode_frame."""


def encode_frame(op: str, header: dict | None = None, tensors: dict | None = None) -> bytes:
    """One frame: `tensors` (torch, any dtype, moved to the CPU) with the operation and `header` (JSON values)."""
    import torch
    from safetensors.torch import save

    if HEADER_TENSOR in (tensors or {}):
        raise ValueError(f"encode_frame: the tensor name {HEADER_TENSOR!r} is reserved for the frame's header")
    stored = {name: tensor.detach().to("cpu").contiguous() for name, tensor in (tensors or {}).items()}
    text = json.dumps(header or {})
    metadata = {"op": op}
    if len(text) > HEADER_IN_METADATA:
        stored[HEADER_TENSOR] = torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8)
    else:
        metadata["header"] = text
    return save(stored, metadata=metadata)


def frame_header(frame: bytes) -> tuple[str, dict]:
    """(op, header) of a frame, its tensors left unread; FrameError for anything that is not a frame."""
    try:
        (size,) = struct.unpack("<Q", frame[:8])
        layout = json.loads(frame[8 : 8 + size])
        metadata = layout["__metadata__"]
        op = metadata["op"]
        if "header" in metadata:
            if HEADER_TENSOR in layout:
                raise ValueError(f"a header in the metadata and a {HEADER_TENSOR!r} tensor")
            header = json.loads(metadata["header"])
        else:
            header = json.loads(_header_tensor_bytes(frame, 8 + size, layout[HEADER_TENSOR]))
    except Exception as exc:  # struct, JSON, key and layout errors alike: bytes that are not a frame
        raise FrameError(f"unreadable frame ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict) or not isinstance(op, str):
        raise FrameError("unreadable frame: no operation, or a header that is not a JSON object")
    return op, header


def _header_tensor_bytes(frame: bytes, data_start: int, entry: dict) -> bytes:
    begin, end = entry["data_offsets"]
    if entry["dtype"] != "U8" or entry["shape"] != [end - begin] or not 0 <= begin <= end <= len(frame) - data_start:
        raise ValueError(f"{HEADER_TENSOR!r} is not the uint8 bytes of a header")
    return frame[data_start + begin : data_start + end]


def decode_frame(frame: bytes) -> tuple[str, dict, dict]:
    """(op, header, tensors) of a frame; FrameError for anything that is not one."""
    from safetensors.torch import load

    op, header = frame_header(frame)
    try:
        tensors = load(frame)
    except Exception as exc:  # safetensors raises its own error types for malformed bytes
        raise FrameError(f"unreadable frame tensors ({type(exc).__name__}: {exc})") from None
    tensors.pop(HEADER_TENSOR, None)
    return op, header, tensors


def grouped(**groups: dict) -> dict:
    """Several named sets of tensors as one frame's tensors ("<group>/<name>"); `ungrouped` undoes it."""
    return {f"{group}/{name}": tensor for group, tensors in groups.items() for name, tensor in tensors.items()}


def ungrouped(tensors: dict, *groups: str) -> list[dict]:
    """The sets of tensors `grouped` put in a frame under `groups`, in that order (empty where it sent none)."""
    return [
        {name.removeprefix(f"{group}/"): tensor for name, tensor in tensors.items() if name.startswith(f"{group}/")}
        for group in groups
    ]
