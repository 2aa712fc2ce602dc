"""Clients of different LoRA ranks (`model.lora.client_ranks`): the global adapter has rank model.lora.r, and a
client of rank k trains and sends its first k components. Pure functions over adapter states, no I/O.

A LoRA module's change is (alpha / r) sum_i B[:, i] A[i, :]: component i is the pair (column i of B, row i of A). A
client of rank k < r works in the global adapter with components k.. set to zero: a component whose B column and A
row are both zero gets zero gradient (each factor's gradient is a product with the other), so it stays zero through
training, and the client's adapter is exactly a rank-k one with the global scaling alpha / r. The client sends the
first k components (`at_rank`); the server puts them back at full rank with zeros (`padded`) before aggregating, which
leaves the update's product B A unchanged.
"""

from __future__ import annotations

from flb.adapters.lora_aggregation import is_lora_a
from flb.types import AdapterState


def is_lora_b(name: str) -> bool:
    return ".lora_B." in name


def rank_of(state: AdapterState) -> int:
    """The rank of `state`'s LoRA factors (the rows of any LoRA A)."""
    return next(tensor.shape[0] for name, tensor in state.items() if is_lora_a(name))


def at_rank(state: AdapterState, rank: int) -> AdapterState:
    """`state`'s first `rank` components: A[:rank], B[:, :rank] (contiguous, as files and digests need); other tensors
    as they are."""
    return {name: _cut(name, tensor, rank) for name, tensor in state.items()}


def padded(state: AdapterState, like: AdapterState) -> AdapterState:
    """`state` at `like`'s rank: its components first, zeros after (a new tensor only where the rank differs)."""
    import torch

    result = {}
    for name, tensor in state.items():
        target = like[name].shape
        if tensor.shape == target:
            result[name] = tensor
            continue
        grown = torch.zeros(target, dtype=tensor.dtype)
        grown[tuple(slice(0, size) for size in tensor.shape)] = tensor
        result[name] = grown
    return result


def with_zero_tail(state: AdapterState, rank: int) -> AdapterState:
    """`state` at its own rank with every component from `rank` on set to zero: where a client of rank `rank` starts."""
    return padded({name: t.clone() for name, t in at_rank(state, rank).items()}, state)


def _cut(name: str, tensor, rank: int):
    if is_lora_a(name):
        return tensor[:rank].contiguous()
    if is_lora_b(name):
        return tensor[:, :rank].contiguous()
    return tensor
