"""Arithmetic on adapter states (dicts of tensors) shared by the clients (local DP) and the server
(aggregation, server-side DP); pure functions, no I/O. A `_inplace` suffix says a function mutates."""
from __future__ import annotations

import math

from flb.types import AdapterState


def subtract(left: AdapterState, right: AdapterState) -> AdapterState:
    return {name: left[name] - right[name] for name in left}


def add(left: AdapterState, right: AdapterState) -> AdapterState:
    return {name: left[name] + right[name] for name in left}


def l2_norm(state: AdapterState) -> float:
    """L2 norm over all tensors together, as one flat vector."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in state.values()))


def clip_inplace(state: AdapterState, clip_norm: float) -> float:
    """Scale `state` so its whole-adapter L2 norm is at most `clip_norm`; return the norm before.

    Fixed clipping of DP-FedAvg (McMahan et al., 2018, https://arxiv.org/abs/1710.06963).
    """
    norm = l2_norm(state)
    if norm > clip_norm:
        scale = clip_norm / norm
        for tensor in state.values():
            tensor.mul_(scale)
    return norm


def add_gaussian_noise_inplace(state: AdapterState, std: float, generator) -> None:
    """Add N(0, std^2) independently to every element, drawn from `generator` (a torch.Generator)."""
    import torch

    for name in sorted(state):
        tensor = state[name]
        noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
        tensor.add_((noise * std).to(tensor.dtype))
