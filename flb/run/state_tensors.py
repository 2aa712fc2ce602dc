"""Checkpoint state that holds tensors (a server optimizer's moments, SCAFFOLD's control variates) as JSON plus
named tensors, so that RunDir keeps the structure in checkpoint.json and the tensors in safetensors: never pickles.
Pure functions, no I/O."""

from __future__ import annotations

import json

TENSOR_MARK = "$tensor"  # {"$tensor": name} stands for the tensor stored under that name


def split_tensors(state: dict) -> tuple[dict, dict]:
    """(state with every tensor replaced by {"$tensor": name}, {name: contiguous copy of the tensor}); a name is
    the JSON list of keys and indices leading to the tensor."""
    tensors: dict = {}
    return _split(state, [], tensors), tensors


def join_tensors(state: dict, tensors: dict) -> dict:
    """`split_tensors` undone; a KeyError names a mark without its tensor."""
    return _join(state, tensors)


def _split(value, path: list, tensors: dict):
    import torch

    if isinstance(value, torch.Tensor):
        name = json.dumps(path)
        tensors[name] = value.detach().to("cpu").contiguous().clone()
        return {TENSOR_MARK: name}
    if isinstance(value, dict):
        if TENSOR_MARK in value:
            raise ValueError(f"strategy state at {json.dumps(path)}: the key {TENSOR_MARK!r} is reserved for tensors")
        return {key: _split(item, path + [key], tensors) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split(item, path + [index], tensors) for index, item in enumerate(value)]
    return value


def _join(value, tensors: dict):
    if isinstance(value, dict):
        if set(value) == {TENSOR_MARK}:
            return tensors[value[TENSOR_MARK]]
        return {key: _join(item, tensors) for key, item in value.items()}
    if isinstance(value, list):
        return [_join(item, tensors) for item in value]
    return value
