"""Aggregation math as pure functions over adapter states (dicts of tensors) and numbers; no I/O.

Adapter arithmetic shared with the clients and the verifier (difference, norm, clipping, noise, the weighted
mean) is in flb.adapter_math.
"""
from __future__ import annotations

import math


def dp_fedavg_noise_std(noise_multiplier: float, clip_norm: float, num_clients: int) -> float:
    """sigma = z * C / m: the sensitivity of an unweighted mean of m updates clipped to C is C / m."""
    return noise_multiplier * clip_norm / num_clients


def adaptive_update_noise_multiplier(noise_multiplier: float, clipped_count_stddev: float) -> float:
    """z_update = (z^-2 - (2 sigma_b)^-2)^(-1/2): the update's share of z when the unclipped count is released
    with N(0, sigma_b^2) too, so that both together are as private as one Gaussian with multiplier z
    (Andrew et al., 2021, https://arxiv.org/abs/1905.03871, section 3). Needs z < 2 sigma_b; z = 0 stays 0."""
    if noise_multiplier == 0:
        return 0.0
    return (noise_multiplier ** -2 - (2 * clipped_count_stddev) ** -2) ** -0.5


MAX_CLIP_STEP = 30.0  # |log| of the largest factor one round may move C by: keeps C a finite positive number


def next_clip_norm(clip_norm: float, unclipped_fraction: float, target_quantile: float, learning_rate: float) -> float:
    """C * exp(-eta * (b - gamma)): the geometric step that moves C towards the gamma-quantile of the update
    norms, b being the (noised) fraction of updates left unclipped (Andrew et al., 2021,
    https://arxiv.org/abs/1905.03871, section 2). A step is capped at e^30 either way (only absurd eta or
    sigma_b reach it), so the norm never overflows to inf or underflows to 0."""
    exponent = -learning_rate * (unclipped_fraction - target_quantile)
    return clip_norm * math.exp(max(-MAX_CLIP_STEP, min(MAX_CLIP_STEP, exponent)))
