"""Aggregation math as pure functions over adapter states (dicts of tensors); no I/O."""
from __future__ import annotations

import math

import torch

from flb.types import AdapterState


def weighted_average(states_and_weights: list[tuple[AdapterState, float]]) -> AdapterState:
    """sum_i w_i * state_i / sum_i w_i, per tensor, in float32 then cast back."""
    total = float(sum(weight for _, weight in states_and_weights))
    first = states_and_weights[0][0]
    result = {}
    for name, reference in first.items():
        acc = torch.zeros_like(reference, dtype=torch.float32)
        for state, weight in states_and_weights:
            acc.add_(state[name].to(torch.float32), alpha=weight / total)
        result[name] = acc.to(reference.dtype)
    return result


def subtract(left: AdapterState, right: AdapterState) -> AdapterState:
    return {name: left[name] - right[name] for name in left}


def add(left: AdapterState, right: AdapterState) -> AdapterState:
    return {name: left[name] + right[name] for name in left}


def l2_norm(state: AdapterState) -> float:
    """L2 norm over all tensors together, as one flat vector."""
    return math.sqrt(sum(float(t.to(torch.float64).pow(2).sum()) for t in state.values()))


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


def add_gaussian_noise_inplace(state: AdapterState, std: float, generator: torch.Generator) -> None:
    """Add N(0, std^2) independently to every element."""
    for name in sorted(state):
        tensor = state[name]
        noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
        tensor.add_((noise * std).to(tensor.dtype))


def dp_fedavg_noise_std(noise_multiplier: float, clip_norm: float, num_clients: int) -> float:
    """sigma = z * C / m: the sensitivity of an unweighted mean of m updates clipped to C is C / m."""
    return noise_multiplier * clip_norm / num_clients
