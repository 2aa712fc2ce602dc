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


def add_gaussian_noise_inplace(state: AdapterState, std: float, random) -> None:
    """Add N(0, std^2) independently to every element, drawn from `random` (a flb.secret_random.SecretRandom,
    so nobody but its owner can regenerate the noise)."""
    for name in sorted(state):
        tensor = state[name]
        tensor.add_(random.normal(tensor.shape, std).to(tensor.dtype))


def weighted_average(states_and_weights: list[tuple[AdapterState, float]]) -> AdapterState:
    """sum_i w_i * state_i / sum_i w_i, per tensor, in float32 in list order, then cast back: FedAvg's mean, which
    `python -m chain.explorer --verify --recompute` recomputes bit for bit from the published updates. A tensor
    equal in every state is that tensor, exactly (the float32 sum would round it): so a frozen LoRA A stays frozen."""
    import torch

    total = float(sum(weight for _, weight in states_and_weights))
    first = states_and_weights[0][0]
    result = {}
    for name, reference in first.items():
        if all(torch.equal(state[name], reference) for state, _ in states_and_weights):
            result[name] = reference.clone()
            continue
        accumulator = torch.zeros_like(reference, dtype=torch.float32)
        for state, weight in states_and_weights:
            accumulator.add_(state[name].to(torch.float32), alpha=weight / total)
        result[name] = accumulator.to(reference.dtype)
    return result
