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
    """Add N(0, std^2) independently to every element, drawn from `random` (a flb.privacy.secret_random.SecretRandom,
    so nobody but its owner can regenerate the noise)."""
    for name in sorted(state):
        tensor = state[name]
        tensor.add_(random.normal(tensor.shape, std).to(tensor.dtype))


def weighted_average(states_and_weights: list[tuple[AdapterState, float]]) -> AdapterState:
    """sum_i w_i * state_i / sum_i w_i, per tensor: FedAvg's mean, specified so that plain numpy reproduces it bit for
    bit (docs/audit-spec.md, FedAvg): per element, in list order, acc <- acc + float64(x_i) * (w_i / W), each product
    and sum rounded to float64 on its own (no fused multiply-add), W the float64 sum of the weights, acc from +0.0;
    then rounded once to the tensor's dtype. A tensor equal in every state is that tensor, exactly (the sum would
    round it): so a frozen LoRA A stays frozen."""
    import torch

    total = float(sum(weight for _, weight in states_and_weights))
    first = states_and_weights[0][0]
    result = {}
    for name, reference in first.items():
        if all(torch.equal(state[name], reference) for state, _ in states_and_weights):
            result[name] = reference.clone()
            continue
        accumulator = torch.zeros_like(reference, dtype=torch.float64)
        for state, weight in states_and_weights:
            accumulator = accumulator + state[name].to(torch.float64) * (weight / total)
        result[name] = accumulator.to(reference.dtype)
    return result
