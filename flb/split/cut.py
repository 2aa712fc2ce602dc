"""Split learning's shared pieces: where the decoder is cut, how a part runs, and the channel between the parts.

The client part is the embeddings, the first `head_layers` (k) decoder blocks, the last `tail_layers` (m) blocks,
the final norm and the LM head; the server's trunk is the blocks between. Both parts drive the family's own
transformers blocks (`SplitPlan.run`: each part builds the masks of its blocks' attention types and their rotary
positions itself, from the attention mask), so the parts joined compute what the whole model computes. How a family's
decoder is laid out and fed is its `Family` (SPLIT_FAMILIES, by model_type); a family that cannot be cut exactly
is refused with its reason.

What crosses the cut is a frame (flb.frames): safetensors bytes whose metadata holds the operation and a JSON
header. The client's `SplitChannel` sends the hidden states at the first cut with the attention mask, receives the
trunk's output, sends the gradient at the second cut and receives the gradient at the first; token ids, labels and
weights never leave the client, and the base weights never leave either side. `send` is the transport: the trunk
server's own handler in one process, a gRPC call over the network (flb.split.grpc_channel).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from flb.errors import ConfigError, FLBError
from flb.frames import decode_frame, encode_frame
from flb.types import AdapterState


class SplitError(FLBError):
    """A frame that is not what the protocol expects at this point (the peer's or the transport's fault)."""


@dataclass(frozen=True)
class Family:
    """How a split part runs one family's decoder: token embeddings (Gemma's scaling is inside its embedding module)
    and blocks fed rotary position embeddings, one for every block, computed by each part for its own blocks."""

    blocks: str = "layers"  # the decoder's list of blocks
    norm: str = "norm"  # its final norm

    def embed(self, decoder, input_ids):
        """The hidden states the first block gets."""
        return decoder.embed_tokens(input_ids)

    def embedding_rows(self, decoder) -> tuple:
        """What `embed` adds up, without dropout: every token id's embedding (V, d), and every position's (P, d), or
        None where positions are not in the embeddings."""
        import torch

        table = decoder.embed_tokens
        return table(torch.arange(table.num_embeddings, device=table.weight.device)), None

    def position_inputs(self, decoder, hidden, position_ids, types: set[str]) -> dict[str, dict]:
        """layer type -> the position arguments its blocks get."""
        position_embeddings = decoder.rotary_emb(hidden, position_ids=position_ids)
        return {layer_type: {"position_embeddings": position_embeddings} for layer_type in types}


@dataclass(frozen=True)
class RotaryByLayerType(Family):
    """Gemma 3: local (sliding) and global layers rotate with different bases, one rotary output per layer type."""

    def position_inputs(self, decoder, hidden, position_ids, types: set[str]) -> dict[str, dict]:
        return {
            layer_type: {"position_embeddings": decoder.rotary_emb(hidden, position_ids, layer_type)}
            for layer_type in types
        }


@dataclass(frozen=True)
class LearnedPositions(Family):
    """GPT-2: learned position embeddings added to the token embeddings (then dropout) below the first block, so only
    the client's embedding step sees positions; the blocks get none."""

    blocks: str = "h"
    norm: str = "ln_f"

    def embed(self, decoder, input_ids):
        return decoder.drop(decoder.wte(input_ids) + decoder.wpe(_position_ids(input_ids)))

    def embedding_rows(self, decoder) -> tuple:
        return decoder.wte.weight, decoder.wpe.weight

    def position_inputs(self, decoder, hidden, position_ids, types: set[str]) -> dict[str, dict]:
        return {layer_type: {} for layer_type in types}


# model_type -> its Family: the families federated mode trains, each checked against its whole model
# (tests/test_split.py, tiny random models)
SPLIT_FAMILIES = {
    "llama": Family(),
    "mistral": Family(),
    "qwen2": Family(),
    "qwen3": Family(),
    "phi3": Family(),
    "gemma2": Family(),
    "gemma3_text": RotaryByLayerType(),
    "gpt2": LearnedPositions(),
}
# model_type -> why it cannot be cut here, and what to do instead
REFUSED_FAMILIES = {
    "gemma3": "Gemma 3 with its vision tower (Gemma3ForConditionalGeneration) is not cut here; use a text-only "
    "Gemma 3 checkpoint (Gemma3ForCausalLM, model_type gemma3_text) or mode federated"
}


def split_family(config) -> Family:
    """The Family of a model's config; a ConfigError naming the reason when split mode cannot cut it."""
    model_type = config.model_type
    if model_type in REFUSED_FAMILIES:
        raise ConfigError(f"mode split: model_type {model_type!r}: {REFUSED_FAMILIES[model_type]}")
    if model_type not in SPLIT_FAMILIES:
        raise ConfigError(
            f"mode split: model_type {model_type!r} is not supported; supported: "
            f"{', '.join(SPLIT_FAMILIES)} (use mode federated for this model)"
        )
    if getattr(config, "use_bidirectional_attention", False):
        raise ConfigError(
            f"mode split: model_type {model_type!r} with use_bidirectional_attention is not a causal "
            "decoder; set it false in the model's config or use mode federated"
        )
    return SPLIT_FAMILIES[model_type]


def backbone(model):
    """The decoder under a peft (or plain transformers) causal LM: its embeddings, blocks and final norm."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix)


def layer_types(config) -> list[str]:
    """Each block's attention type, as the family's forward picks its mask: the config's layer_types where it has
    them (Qwen, Gemma), else sliding everywhere when it sets a sliding_window (Mistral, Phi-3), else full."""
    if getattr(config, "layer_types", None):
        return list(config.layer_types)
    sliding = getattr(config, "sliding_window", None) is not None
    return ["sliding_attention" if sliding else "full_attention"] * config.num_hidden_layers


def _position_ids(tokens):
    """Positions 0..T-1 of a batch (no cache), as each family's forward makes them."""
    import torch

    return torch.arange(tokens.shape[1], device=tokens.device)[None]


def _masks(config, hidden, attention_mask, position_ids, types: set[str]) -> dict:
    """layer type -> the attention mask its blocks get, from transformers' own mask functions."""
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    makers = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}
    return {
        layer_type: makers[layer_type](
            config=config,
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            past_key_values=None,
            position_ids=position_ids,
        )
        for layer_type in types
    }


@dataclass(frozen=True)
class SplitPlan:
    """Which decoder blocks each side runs, and how to run them (the model's Family)."""

    num_layers: int
    head_layers: int
    tail_layers: int
    family: Family = SPLIT_FAMILIES["llama"]

    @classmethod
    def of(cls, model, head_layers: int, tail_layers: int) -> SplitPlan:
        """The plan for a peft model; a ConfigError when it cannot be cut there."""
        config = model.get_base_model().config
        plan = cls(config.num_hidden_layers, head_layers, tail_layers, split_family(config))
        if not plan.trunk_layers:
            raise ConfigError(
                f"split.head_layers + split.tail_layers = {head_layers + tail_layers} leaves the server "
                f"no block of the model's {plan.num_layers}; make their sum at most {plan.num_layers - 1}"
            )
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
        match = re.search(rf"\.{self.family.blocks}\.(\d+)\.", name)
        return match is not None and int(match.group(1)) in self.trunk_layers

    def client_part(self, state: AdapterState) -> AdapterState:
        return {name: tensor for name, tensor in state.items() if not self.in_trunk(name)}

    def trunk_part(self, state: AdapterState) -> AdapterState:
        return {name: tensor for name, tensor in state.items() if self.in_trunk(name)}

    def parts(self, state: AdapterState) -> dict[str, AdapterState]:
        """An adapter's two parts by name, as the ledger's per-part digests cover them."""
        return {"client": self.client_part(state), "trunk": self.trunk_part(state)}

    # running the parts (`model`: the peft model, or the plain transformers one)

    def blocks(self, model):
        return getattr(backbone(model), self.family.blocks)

    def embed(self, model, input_ids):
        """The hidden states the first block gets for `input_ids`."""
        return self.family.embed(backbone(model), input_ids)

    def final_norm(self, model, hidden):
        return getattr(backbone(model), self.family.norm)(hidden)

    def run(self, model, layers: range, hidden, attention_mask):
        """Hidden states after the blocks `layers`, as the family's own forward runs them (no cache; positions
        0..T-1; each block gets the mask of its attention type)."""
        if not layers:
            return hidden
        decoder = backbone(model)
        types = layer_types(decoder.config)
        used = {types[index] for index in layers}
        position_ids = _position_ids(hidden)
        masks = _masks(decoder.config, hidden, attention_mask, position_ids, used)
        positions = self.family.position_inputs(decoder, hidden, position_ids, used)
        blocks = self.blocks(model)
        for index in layers:
            hidden = blocks[index](
                hidden, attention_mask=masks[types[index]], position_ids=position_ids, **positions[types[index]]
            )
        return hidden


def set_adapter_part(model, part: AdapterState) -> None:
    """Load some of an adapter's tensors (one part) into a peft model, leaving the others as they are."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, part)
    if result.unexpected_keys:
        raise SplitError(f"adapter part has tensors this model lacks (first: {result.unexpected_keys[0]})")


# the channel


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
