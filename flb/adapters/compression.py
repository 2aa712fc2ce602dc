"""Codecs that compress an adapter state for the trip between a client and the server (comm.compression,
comm.broadcast_compression). A codec's payload is itself a state of plain contiguous CPU tensors, so it is
serialised, digested and signed like any adapter. Encoding and decoding are pure torch on the CPU, specified to the
bit below, so an auditor recomputes every round from the published payloads, broadcasts included (as_received).
`decode` refuses (MalformedPayload) anything that is not a well-formed encoding of tensors shaped like the expected
adapter: a client may be malicious.

Formats, per tensor NAME of n elements (x: its elements flattened in row-major order; the payload names join NAME
and a part with "#"; a block is BLOCK_SIZE = 64 consecutive elements of x, the last one possibly shorter, so
there are B = ceil(n / 64) blocks):
- none: NAME -> the tensor itself.
- bf16: NAME -> x rounded to bfloat16 (round to nearest even), in the tensor's shape. Decoded: converted back.
- int8: our own linear symmetric blockwise format. NAME#absmax: float32 [B], each block's max |x| (0 for an
  all-zero block). NAME#int8: int8 [n], code = round(x / absmax * 127) (float32, in that order, rounded half to
  even; 0 where absmax is 0), so every code lies in [-127, 127]. Decoded: code * absmax / 127, computed in float64
  (exact product, one rounded division) and rounded once to float32, which gives a code of +-127 exactly +-absmax:
  decoding and re-encoding that decoding gives the same payload back.
- nf4: bitsandbytes' 4-bit NormalFloat format (QLoRA, Dettmers et al., 2023, https://arxiv.org/abs/2305.14314),
  blocksize 64. NAME#absmax: float32 [B], each block's max |x| (0 for an all-zero block). NAME#nf4: uint8
  [ceil(n / 2)], two 4-bit codes a byte, element 2i in the high nibble and 2i+1 in the low one (the low nibble of
  the last byte is padding when n is odd: 7, and ignored); a code is the index of the NF4_TABLE value nearest
  x / absmax (float32 division; ties to the lower index; 7, the 0.0, where absmax is 0), the codes bitsandbytes'
  quantize_4bit picks. Decoded: NF4_TABLE[code] * absmax, a float32 product, which is what bitsandbytes' own
  dequantize_4bit returns.
- topk: k = max(1, ceil(topk_fraction * n)) elements of largest |x|, ties to the lower index. NAME#indices: int32
  [k], their flat indices, strictly increasing; NAME#values: float32 [k], their values. Decoded: zeros with those
  values at those indices. The decoder takes any k in [1, n]: the fraction is the sender's setting, not part of the
  payload.
Every float a payload holds (absmax, values, bf16 elements) must be finite, and every absmax >= 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flb.adapters.arithmetic import add, subtract
from flb.errors import FLBError, invalid_value, shown
from flb.types import AdapterState

if TYPE_CHECKING:
    import torch

BLOCK_SIZE = 64  # int8 and nf4: one absmax per 64 consecutive elements of the flattened tensor
INT8_MAX_CODE = 127
# bitsandbytes' get_4bit_type("nf4") in float32, code 0 to 15 (each decimal is that float32 exactly). The QLoRA
# recipe (normal quantiles, normalised to [-1, 1], an exact 0) recomputed here lands up to a few float32 ulps away,
# so the table is held as bitsandbytes ships it; tests/test_compression.py checks the two agree bit for bit.
NF4_TABLE = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)


class MalformedPayload(FLBError, ValueError):
    """A received payload is not a well-formed encoding of the expected adapter under its codec."""


def encode(codec: str, state: AdapterState, topk_fraction: float = 0.1) -> AdapterState:
    """The payload for `state` (see the module's docstring). codec "none": the tensors themselves (a shallow copy)."""
    encode_tensor = _codec(codec).encode
    return {
        _key(name, part): tensor for name in state for part, tensor in encode_tensor(state[name], topk_fraction).items()
    }


def decode(codec: str, payload: AdapterState, like: AdapterState) -> AdapterState:
    """Tensors with exactly `like`'s names, shapes and dtypes, decoded from `payload`; MalformedPayload, naming the
    payload tensor and the fault, when `payload` is not a well-formed `codec` encoding of tensors shaped like
    `like`. codec "none": the payload's own tensors, once their names, shapes and dtypes are checked."""
    spec = _codec(codec)
    _check_names(codec, spec.parts, payload, like)
    return {name: spec.decode(_Received(codec, payload, name), tensor) for name, tensor in like.items()}


def with_error_feedback(
    codec: str, delta: AdapterState, residual: AdapterState, topk_fraction: float
) -> tuple[AdapterState, AdapterState]:
    """(payload, new residual). topk keeps what it did not send for the next round (error feedback, Stich et al.,
    2018, https://arxiv.org/abs/1809.07599): corrected = delta + residual (an empty residual is zeros), payload =
    encode(corrected), new residual = corrected - decode(payload). Every other codec: (encode(delta), {})."""
    if codec != "topk":
        return encode(codec, delta, topk_fraction), {}
    corrected = add(delta, residual) if residual else dict(delta)
    payload = encode(codec, corrected, topk_fraction)
    return payload, subtract(corrected, decode(codec, payload, corrected))


def compress_update(
    codec: str, local: AdapterState, global_adapter: AdapterState, residual: AdapterState, topk_fraction: float
) -> tuple[AdapterState, AdapterState]:
    """(what a client sends for its trained adapter `local`, its new residual): under none the adapter itself, under
    every other codec the encoding of its change from the global adapter it started from (with_error_feedback)."""
    if codec == "none":
        return local, {}
    return with_error_feedback(codec, subtract(local, global_adapter), residual, topk_fraction)


def open_update(codec: str, sent: AdapterState, global_adapter: AdapterState) -> AdapterState:
    """The adapter a client's update `sent` under `codec` stands for: under none the tensors themselves (checked
    later), under every other codec the global adapter plus the decoded change. MalformedPayload when it does not
    decode."""
    if codec == "none":
        return sent
    return add(global_adapter, decode(codec, sent, like=global_adapter))


def as_received(codec: str, state: AdapterState) -> AdapterState:
    """`state` as a client decodes it from its `codec` encoding (comm.broadcast_compression): the global adapter each
    round is this, so the adapter recorded, evaluated and trained from is the one that crosses the wire. Decoding
    it and encoding it again gives the same payload (bf16, int8 and nf4 are idempotent), so a transport may encode
    the global adapter afresh."""
    if codec == "none":
        return state
    return decode(codec, encode(codec, state), like=state)


def payload_bytes(payload: AdapterState) -> int:
    """The bytes of a payload's tensor data: elements times element size, summed."""
    return sum(tensor.numel() * tensor.element_size() for tensor in payload.values())


@dataclass(frozen=True)
class _Codec:
    parts: tuple[str, ...]  # each tensor's payload names are NAME#part; "" is NAME itself
    encode: Callable[[torch.Tensor, float], dict[str, torch.Tensor]]  # tensor, topk_fraction -> {part: tensor}
    decode: Callable[[_Received, torch.Tensor], torch.Tensor]  # the tensor's parts, the tensor it is like


def _codec(codec: str) -> _Codec:
    if codec not in _CODECS:
        raise invalid_value("comm.compression", codec, " | ".join(CODECS))
    return _CODECS[codec]


def _key(name: str, part: str) -> str:
    return f"{name}#{part}" if part else name


def _check_names(codec: str, parts: tuple[str, ...], payload: AdapterState, like: AdapterState) -> None:
    expected = {_key(name, part) for name in like for part in parts}
    missing = sorted(expected - payload.keys())
    if missing:
        raise MalformedPayload(f"{codec} payload: {missing[0]} is missing; encode the whole adapter with {codec}")
    unexpected = sorted(payload.keys() - expected, key=str)
    if unexpected:
        raise MalformedPayload(
            f"{codec} payload: {shown(unexpected[0])} is not a tensor of this adapter's {codec} encoding; send "
            "only the tensors encode() returns"
        )


class _Received:
    """One tensor's parts in a received payload, each checked as it is read."""

    def __init__(self, codec: str, payload: AdapterState, name: str):
        self.codec, self.payload, self.name = codec, payload, name

    def refusal(self, part: str, problem: str) -> MalformedPayload:
        return MalformedPayload(
            f"{self.codec} payload: {_key(self.name, part)} {problem}; the update is not a well-formed "
            f"{self.codec} encoding of this adapter"
        )

    def part(self, part: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        """The part, refused unless it is a tensor of `dtype` and `shape`."""
        import torch

        tensor = self.payload[_key(self.name, part)]
        if not isinstance(tensor, torch.Tensor):
            raise self.refusal(part, f"is a {type(tensor).__name__}, not a tensor")
        if tensor.dtype != dtype:
            raise self.refusal(part, f"has dtype {tensor.dtype}, expected {dtype}")
        if tuple(tensor.shape) != tuple(shape):
            raise self.refusal(part, f"has shape {list(tensor.shape)}, expected {list(shape)}")
        return tensor

    def finite_part(self, part: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        """The part, refused also when an element is NaN or infinite."""
        tensor = self.part(part, dtype, shape)
        if not bool(tensor.isfinite().all()):
            raise self.refusal(part, "holds a NaN or infinite value")
        return tensor

    def absmax(self, numel: int) -> torch.Tensor:
        """NAME#absmax: float32, one finite value >= 0 per block of `numel` elements."""
        import torch

        absmax = self.finite_part("absmax", torch.float32, (_num_blocks(numel),))
        if bool((absmax < 0).any()):
            raise self.refusal("absmax", "holds a negative value")
        return absmax


def _num_blocks(numel: int) -> int:
    return math.ceil(numel / BLOCK_SIZE)


def _blocks(flat: torch.Tensor) -> torch.Tensor:
    """`flat` zero-padded to whole blocks, one block a row (the padding never changes a block's max |x|)."""
    import torch

    return torch.nn.functional.pad(flat, (0, -flat.numel() % BLOCK_SIZE)).view(-1, BLOCK_SIZE)


def _like(flat_blocks: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Whole blocks of values cut back to `like`'s elements, dtype and shape."""
    return flat_blocks.flatten()[: like.numel()].to(like.dtype).reshape(like.shape)


def _encode_none(tensor: torch.Tensor, topk_fraction: float) -> dict[str, torch.Tensor]:
    return {"": tensor}


def _decode_none(received: _Received, like: torch.Tensor) -> torch.Tensor:
    return received.part("", like.dtype, like.shape)


def _encode_bf16(tensor: torch.Tensor, topk_fraction: float) -> dict[str, torch.Tensor]:
    import torch

    return {"": tensor.detach().to(torch.bfloat16).contiguous()}


def _decode_bf16(received: _Received, like: torch.Tensor) -> torch.Tensor:
    import torch

    return received.finite_part("", torch.bfloat16, like.shape).to(like.dtype)


def _encode_int8(tensor: torch.Tensor, topk_fraction: float) -> dict[str, torch.Tensor]:
    import torch

    blocks = _blocks(tensor.detach().float().flatten())
    absmax = blocks.abs().amax(dim=1)
    divisor = torch.where(absmax > 0, absmax, torch.ones_like(absmax))  # an all-zero block's codes are 0
    codes = torch.round(blocks / divisor[:, None] * INT8_MAX_CODE).flatten()[: tensor.numel()]
    return {"absmax": absmax, "int8": codes.to(torch.int8)}


def _decode_int8(received: _Received, like: torch.Tensor) -> torch.Tensor:
    import torch

    absmax = received.absmax(like.numel())
    codes = received.part("int8", torch.int8, (like.numel(),))
    if like.numel() and int(codes.min()) < -INT8_MAX_CODE:
        raise received.refusal("int8", f"holds the code {int(codes.min())}; codes lie in [-127, 127]")
    return _like(_blocks(codes.double()) * absmax.double()[:, None] / INT8_MAX_CODE, like)


def _encode_nf4(tensor: torch.Tensor, topk_fraction: float) -> dict[str, torch.Tensor]:
    """Each element's code is the nearest NF4_TABLE value to x / absmax (float32 division), ties to the lower code:
    the codes bitsandbytes' quantize_4bit gives (tests/test_compression.py), computed the same on every machine, as
    recomputing a broadcast needs (bitsandbytes' kernels differ from backend to backend)."""
    import torch

    blocks = _blocks(tensor.detach().float().flatten())
    absmax = blocks.abs().amax(dim=1)
    divisor = torch.where(absmax > 0, absmax, torch.ones_like(absmax))  # an all-zero block's codes are 7 (0.0)
    scaled = (blocks / divisor[:, None]).flatten()[: 2 * math.ceil(tensor.numel() / 2)]  # an odd n: one 0.0 more
    table = torch.tensor(NF4_TABLE, dtype=torch.float32)
    codes = (scaled[:, None] - table).abs().argmin(dim=1).to(torch.uint8)  # argmin: the first of equals
    return {"absmax": absmax, "nf4": (codes[0::2] << 4) | codes[1::2]}


def _decode_nf4(received: _Received, like: torch.Tensor) -> torch.Tensor:
    import torch

    absmax = received.absmax(like.numel())
    packed = received.part("nf4", torch.uint8, (math.ceil(like.numel() / 2),))
    codes = torch.stack((packed >> 4, packed & 0xF), dim=1).flatten()[: like.numel()]
    values = torch.tensor(NF4_TABLE, dtype=torch.float32)[codes.long()]
    return _like(_blocks(values) * absmax[:, None], like)


def _encode_topk(tensor: torch.Tensor, topk_fraction: float) -> dict[str, torch.Tensor]:
    import torch

    if not 0 < topk_fraction <= 1:
        raise invalid_value("comm.topk_fraction", topk_fraction, "a number in (0, 1]")
    flat = tensor.detach().float().flatten()
    k = max(1, math.ceil(topk_fraction * flat.numel()))
    largest = torch.sort(flat.abs(), descending=True, stable=True).indices[:k]  # stable: ties to the lower index
    indices = largest.sort().values
    return {"indices": indices.to(torch.int32), "values": flat[indices]}


def _decode_topk(received: _Received, like: torch.Tensor) -> torch.Tensor:
    import torch

    indices = received.payload[_key(received.name, "indices")]
    k = indices.numel() if isinstance(indices, torch.Tensor) else 0
    if not 1 <= k <= like.numel():
        raise received.refusal("indices", f"has {k} elements, expected 1 to {like.numel()}")
    indices = received.part("indices", torch.int32, (k,)).long()
    values = received.finite_part("values", torch.float32, (k,))
    if int(indices.min()) < 0 or int(indices.max()) >= like.numel():
        raise received.refusal("indices", f"holds an index outside [0, {like.numel()})")
    if not bool((indices[1:] > indices[:-1]).all()):
        raise received.refusal("indices", "is not strictly increasing")
    flat = torch.zeros(like.numel(), dtype=torch.float32).index_put_((indices,), values)
    return flat.to(like.dtype).reshape(like.shape)


# A codec's name, payload parts and functions, registered together in one line each.
_CODECS = {
    "none": _Codec(("",), _encode_none, _decode_none),
    "bf16": _Codec(("",), _encode_bf16, _decode_bf16),
    "int8": _Codec(("absmax", "int8"), _encode_int8, _decode_int8),
    "nf4": _Codec(("absmax", "nf4"), _encode_nf4, _decode_nf4),
    "topk": _Codec(("indices", "values"), _encode_topk, _decode_topk),
}
CODECS = tuple(_CODECS)
