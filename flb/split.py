"""Split learning's shared pieces: where the decoder is cut, how a part runs, and the channel between the parts.

The client part is the embeddings, the first `head_layers` (k) decoder blocks, the last `tail_layers` (m) blocks,
the final norm and the LM head; the server's trunk is the blocks between. Both parts run the blocks of one
transformers decoder (`run_blocks`: the causal mask and rotary positions each part computes itself from the
attention mask), so the parts joined compute what the whole model computes.

What crosses the cut is a frame: safetensors bytes whose metadata holds the operation and a JSON header. The
client's `SplitChannel` sends the hidden states at the first cut with the attention mask, receives the trunk's
output, sends the gradient at the second cut and receives the gradient at the first; token ids, labels and
weights never leave the client, and the base weights never leave either side. `send` is the transport: the trunk
server's own handler in one process, a gRPC call over the network (flb.split_net).
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from typing import Callable

from flb.errors import ConfigError, FLBError
from flb.types import AdapterState

SPLIT_MODEL_TYPES = ("llama",)  # decoders whose blocks run_blocks drives as the model's own forward does
_LAYER = re.compile(r"\.layers\.(\d+)\.")


class SplitError(FLBError):
    """A frame that is not what the protocol expects at this point (the peer's or the transport's fault)."""


@dataclass(frozen=True)
class SplitPlan:
    """Which decoder blocks each side runs."""

    num_layers: int
    head_layers: int
    tail_layers: int

    @classmethod
    def of(cls, model, head_layers: int, tail_layers: int) -> "SplitPlan":
        """The plan for a peft model; a ConfigError when it cannot be cut there."""
        config = model.get_base_model().config.get_text_config()
        if config.model_type not in SPLIT_MODEL_TYPES:
            raise ConfigError(f"mode split: model_type {config.model_type!r} is not supported; supported: "
                              f"{', '.join(SPLIT_MODEL_TYPES)} (use mode federated for this model)")
        plan = cls(config.num_hidden_layers, head_layers, tail_layers)
        if not plan.trunk_layers:
            raise ConfigError(f"split.head_layers + split.tail_layers = {head_layers + tail_layers} leaves the server "
                              f"no block of the model's {plan.num_layers}; make their sum at most {plan.num_layers - 1}")
        return plan

    @property
    def head_range(self) -> range:
        return range(self.head_layers)

    @property
    def trunk_layers(self) -> range:
        return range(self.head_layers, self.num_layers - self.tail_layers)

    @property
    def tail_range(self) -> range:
        return range(self.num_layers - self.tail_layers, self.num_layers)

    def in_trunk(self, name: str) -> bool:
        """Whether a parameter or adapter tensor (by its name) belongs to the server's trunk."""
        match = _LAYER.search(name)
        return match is not None and int(match.group(1)) in self.trunk_layers

    def client_part(self, state: AdapterState) -> AdapterState:
        return {name: tensor for name, tensor in state.items() if not self.in_trunk(name)}

    def trunk_part(self, state: AdapterState) -> AdapterState:
        return {name: tensor for name, tensor in state.items() if self.in_trunk(name)}

    def parts(self, state: AdapterState) -> dict[str, AdapterState]:
        """An adapter's two parts by name, as the ledger's per-part digests cover them."""
        return {"client": self.client_part(state), "trunk": self.trunk_part(state)}


def backbone(model):
    """The decoder under a peft (or plain transformers) causal LM: embed_tokens, layers, norm, rotary_emb."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix)


def run_blocks(decoder, layers: range, hidden, attention_mask):
    """hidden states after `layers` of `decoder`, as its own forward runs them (no cache; positions 0..T-1)."""
    import torch
    from transformers.masking_utils import create_causal_mask

    if not layers:
        return hidden
    position_ids = torch.arange(hidden.shape[1], device=hidden.device)[None]
    mask = create_causal_mask(config=decoder.config, inputs_embeds=hidden, attention_mask=attention_mask,
                              past_key_values=None, position_ids=position_ids)
    position_embeddings = decoder.rotary_emb(hidden, position_ids=position_ids)
    for index in layers:
        hidden = decoder.layers[index](hidden, attention_mask=mask, position_embeddings=position_embeddings,
                                       position_ids=position_ids)
    return hidden


def set_adapter_part(model, part: AdapterState) -> None:
    """Load some of an adapter's tensors (one part) into a peft model, leaving the others as they are."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, part)
    if result.unexpected_keys:
        raise SplitError(f"adapter part has tensors this model lacks (first: {result.unexpected_keys[0]})")


# frames


def encode_frame(op: str, header: dict | None = None, tensors: dict | None = None) -> bytes:
    """One message: safetensors bytes of `tensors`, the operation and a JSON header in its metadata."""
    from safetensors.torch import save

    return save({name: tensor.detach().to("cpu").contiguous() for name, tensor in (tensors or {}).items()},
                metadata={"op": op, "header": json.dumps(header or {})})


def frame_header(frame: bytes) -> tuple[str, dict]:
    """(op, header) of a frame, its tensors left unread; SplitError for anything that is not a frame."""
    try:
        (size,) = struct.unpack("<Q", frame[:8])
        metadata = json.loads(frame[8:8 + size])["__metadata__"]
        op, header = metadata["op"], json.loads(metadata["header"])
    except Exception as exc:  # struct, JSON and key errors alike: bytes that are not a frame
        raise SplitError(f"unreadable frame ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict) or not isinstance(op, str):
        raise SplitError("frame without an operation or with a header that is not a JSON object")
    return op, header


def decode_frame(frame: bytes) -> tuple[str, dict, dict]:
    """(op, header, tensors) of a frame; SplitError for anything that is not one."""
    from safetensors.torch import load

    op, header = frame_header(frame)
    try:
        tensors = load(frame)
    except Exception as exc:  # safetensors raises its own error types for malformed bytes
        raise SplitError(f"unreadable frame tensors ({type(exc).__name__}: {exc})") from None
    return op, header, tensors


def grouped(**groups: dict) -> dict:
    """Several named sets of tensors as one frame's tensors ("<group>/<name>"); `ungrouped` undoes it."""
    return {f"{group}/{name}": tensor for group, tensors in groups.items() for name, tensor in tensors.items()}


def ungrouped(tensors: dict, *groups: str) -> list[dict]:
    """The sets of tensors `grouped` put in a frame under `groups`, in that order (empty where it sent none)."""
    return [{name.removeprefix(f"{group}/"): tensor for name, tensor in tensors.items()
             if name.startswith(f"{group}/")} for group in groups]


def reply_or_raise(frame: bytes) -> tuple[dict, dict]:
    """A reply's header and tensors; the peer's error as SplitError."""
    op, header, tensors = decode_frame(frame)
    if op == "error":
        raise SplitError(f"split server: {header.get('message', 'no reason given')}")
    return header, tensors


@dataclass
class Traffic:
    """Bytes of the frames sent each way, and the forward passes (micro-batches) they carried."""

    to_server: int = 0
    to_client: int = 0
    forwards: int = 0

    def add(self, sent: int, received: int) -> None:
        self.to_server += sent
        self.to_client += received


@dataclass
class SplitChannel:
    """The client's end: one session (client, round) at a time with the trunk server, over `send` (a frame out, its
    reply back)."""

    send: Callable[[bytes], bytes]
    identity: dict = field(default_factory=dict)  # over the network: the token the server gave this client
    traffic: Traffic = field(default_factory=Traffic)

    def _call(self, op: str, header: dict, tensors: dict | None = None) -> tuple[dict, dict]:
        frame = encode_frame(op, {**header, **self.identity}, tensors)
        reply = self.send(frame)
        self.traffic.add(len(frame), len(reply))
        return reply_or_raise(reply)

    def open(self, client_id: int, round: int) -> None:
        self._call("open", {"client_id": client_id, "round": round})

    def forward(self, hidden, attention_mask):
        """The trunk's output for the hidden states at the first cut."""
        self.traffic.forwards += 1
        _, tensors = self._call("forward", {}, {"hidden": hidden, "attention_mask": attention_mask})
        return tensors["hidden"]

    def backward(self, grad, step: bool, input_grad: bool = True):
        """The gradient at the first cut for the gradient at the second (None unless `input_grad`: a client with no
        trainable block before the cut needs none); `step`: the trunk takes its optimizer step after it (the last
        micro-batch of a client's step)."""
        _, tensors = self._call("backward", {"step": step, "input_grad": input_grad}, {"grad": grad})
        return tensors.get("grad")

    def close(self) -> AdapterState:
        """End the session; the trunk's adapter tensors as they are after it."""
        _, tensors = self._call("close", {})
        return tensors
