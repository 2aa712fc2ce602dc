"""flb.frames: tensors of every dtype (empty ones too) and a JSON header round-trip; the header is read without the
tensors; a long header travels as a tensor; bytes that are not a whole frame are a one-line FrameError."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from flb import frames
from flb.frames import FrameError, decode_frame, encode_frame, frame_header, grouped, ungrouped

HEADER = {"round": 3, "client_id": 1, "shard": [{"messages": [{"role": "user", "content": 'hé "quoted"'}]}]}


def assorted_tensors() -> dict:
    return {
        "bf16": torch.tensor([[1.5, -2.25], [0.0, 3.0]], dtype=torch.bfloat16),
        "f16": torch.tensor([0.5, -1.0], dtype=torch.float16),
        "f32": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "i64": torch.tensor([-(2**40), 7]),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False]),
        "empty": torch.zeros(0, 4),
        "empty_bf16": torch.zeros(3, 0, dtype=torch.bfloat16),
        "scalar": torch.tensor(2.0),
    }


def assert_same_tensors(got: dict, sent: dict) -> None:
    assert set(got) == set(sent)
    for name, tensor in sent.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), name


def test_tensors_of_every_dtype_and_the_header_round_trip():
    sent = assorted_tensors()
    op, header, tensors = decode_frame(encode_frame("fit", HEADER, sent))
    assert (op, header) == ("fit", HEADER)
    assert_same_tensors(tensors, sent)


def test_a_frame_without_header_or_tensors():
    assert decode_frame(encode_frame("stop")) == ("stop", {}, {})


def test_the_header_is_read_without_the_tensors():
    frame = encode_frame("forward", {"step": True}, {"hidden": torch.ones(2, 3)})
    assert frame_header(frame) == ("forward", {"step": True})
    assert frame_header(frame[: len(frame) - 4]) == ("forward", {"step": True})  # the tensors' bytes are not read


def test_the_split_byte_format_is_safetensors_with_op_and_header_in_its_metadata():
    """What split peers exchange: the safetensors layout, metadata {"op", "header": JSON text}."""
    from safetensors.torch import load

    frame = encode_frame("open", {"client_id": 0, "round": 2}, {"x": torch.ones(1)})
    (size,) = struct.unpack("<Q", frame[:8])
    assert json.loads(frame[8 : 8 + size])["__metadata__"] == {"op": "open", "header": '{"client_id": 0, "round": 2}'}
    assert torch.equal(load(frame)["x"], torch.ones(1))


def test_a_long_header_travels_as_a_tensor_and_reads_back(monkeypatch):
    monkeypatch.setattr(frames, "HEADER_IN_METADATA", 16)
    sent = assorted_tensors()
    frame = encode_frame("build", HEADER, sent)
    (size,) = struct.unpack("<Q", frame[:8])
    layout = json.loads(frame[8 : 8 + size])
    assert "header" not in layout["__metadata__"] and layout[frames.HEADER_TENSOR]["dtype"] == "U8"
    assert frame_header(frame) == ("build", HEADER)
    op, header, tensors = decode_frame(frame)
    assert (op, header) == ("build", HEADER)
    assert_same_tensors(tensors, sent)  # the header's tensor is not among them


def test_the_header_tensor_name_is_reserved():
    with pytest.raises(ValueError, match="reserved"):
        encode_frame("fit", {}, {frames.HEADER_TENSOR: torch.zeros(1, dtype=torch.uint8)})


@pytest.mark.parametrize("cut", [0, 5, 8, 20, -9])
def test_a_truncated_frame_is_a_frame_error(cut):
    frame = encode_frame("fit", HEADER, {"a": torch.arange(8, dtype=torch.float32)})
    with pytest.raises(FrameError, match=r"^unreadable frame") as info:
        decode_frame(frame[:cut])
    assert "\n" not in str(info.value)


def test_a_truncated_long_header_is_a_frame_error(monkeypatch):
    monkeypatch.setattr(frames, "HEADER_IN_METADATA", 16)
    frame = encode_frame("build", HEADER)
    with pytest.raises(FrameError, match=r"^unreadable frame"):
        frame_header(frame[:-10])


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x00" * 20,
        b"\xff" * 64,
        b"not a frame at all",
        struct.pack("<Q", 2) + b"{}",
        struct.pack("<Q", 2**62) + b"{}",
    ],
)
def test_bytes_that_are_not_a_frame_are_a_frame_error(garbage):
    with pytest.raises(FrameError, match=r"^unreadable frame"):
        decode_frame(garbage)


def test_a_corrupt_header_is_a_frame_error():
    frame = bytearray(encode_frame("fit", {"round": 1}, {"a": torch.ones(2)}))
    frame[12] ^= 0xFF  # inside the safetensors JSON header
    with pytest.raises(FrameError, match=r"^unreadable frame"):
        decode_frame(bytes(frame))


def test_a_frame_without_an_operation_or_with_a_header_not_an_object_is_refused():
    from safetensors.torch import save

    for metadata in ({"header": "{}"}, {"op": "fit", "header": "[1, 2]"}):
        with pytest.raises(FrameError, match=r"^unreadable frame"):
            frame_header(save({}, metadata=metadata))


def test_frame_error_is_a_value_error():
    """What the split servers catch to answer a bad frame with an error frame."""
    assert issubclass(FrameError, ValueError)


def test_grouped_sets_of_tensors_come_back_apart():
    first, second = {"w": torch.ones(1)}, {"w": torch.zeros(1), "v": torch.ones(2)}
    _, _, tensors = decode_frame(encode_frame("fit", {}, grouped(first=first, second=second)))
    got_first, got_second, got_none = ungrouped(tensors, "first", "second", "third")
    assert_same_tensors(got_first, first)
    assert_same_tensors(got_second, second)
    assert got_none == {}
