"""Aggregation math as pure functions over adapter states (dicts of tensors) and numbers; no I/O.

Adapter arithmetic shared with the clients and the verifier (difference, norm, clipping, noise, the weighted
mean) is in flb.adapters.arithmetic.
"""

from __future__ import annotations

import math

from flb.types import AdapterState


def dp_fedavg_noise_std(noise_multiplier: float, clip_norm: float, num_clients: int) -> float:
    """sigma = z * C / m: the sensitivity of an unweighted mean of m updates clipped to C is C / m."""
    return noise_multiplier * clip_norm / num_clients


def adaptive_update_noise_multiplier(noise_multiplier: float, clipped_count_stddev: float) -> float:
    """z_update = (z^-2 - (2 sigma_b)^-2)^(-1/2): the update's share of z when the unclipped count is released
    with N(0, sigma_b^2) too, so that both together are as private as one Gaussian with multiplier z
    (Andrew et al., 2021, https://arxiv.org/abs/1905.03871, section 3). Needs z < 2 sigma_b; z = 0 stays 0."""
    if noise_multiplier == 0:
        return 0.0
    return (noise_multiplier**-2 - (2 * clipped_count_stddev) ** -2) ** -0.5


MAX_CLIP_STEP = 30.0  # |log| of the largest factor one round may move C by: keeps C a finite positive number


def next_clip_norm(clip_norm: float, unclipped_fraction: float, target_quantile: float, learning_rate: float) -> float:
    """C * exp(-eta * (b - gamma)): the geometric step that moves C towards the gamma-quantile of the update
    norms, b being the (noised) fraction of updates left unclipped (Andrew et al., 2021,
    https://arxiv.org/abs/1905.03871, section 2). A step is capped at e^30 either way (only absurd eta or
    sigma_b reach it), so the norm never overflows to inf or underflows to 0."""
    exponent = -learning_rate * (unclipped_fraction - target_quantile)
    return clip_norm * math.exp(max(-MAX_CLIP_STEP, min(MAX_CLIP_STEP, exponent)))


# Server optimizers (Reddi et al., 2021, "Adaptive Federated Optimization", https://arxiv.org/abs/2003.00295,
# Algorithm 2). Delta is the pseudo-gradient with the sign of an update: the clients' mean minus the global adapter.


def pseudo_gradient(global_adapter: AdapterState, mean: AdapterState) -> AdapterState:
    """Delta = mean - x in float32, `mean` being the clients' (by default sum_i w_i x_i / sum_i w_i)."""
    return {name: mean[name].float() - global_adapter[name].float() for name in global_adapter}


def momentum_buffer(momentum: AdapterState, delta: AdapterState, beta: float) -> AdapterState:
    """M <- beta M + Delta: the heavy-ball buffer of torch.optim.SGD (no dampening), FedAvgM's server momentum
    (Hsu et al., 2019, https://arxiv.org/abs/1909.06335)."""
    return {name: beta * momentum[name] + delta[name] for name in delta}


def first_moment(m: AdapterState, delta: AdapterState, beta_1: float) -> AdapterState:
    """m <- beta_1 m + (1 - beta_1) Delta."""
    return {name: beta_1 * m[name] + (1 - beta_1) * delta[name] for name in delta}


def adagrad_second_moment(v: AdapterState, delta: AdapterState) -> AdapterState:
    """FedAdagrad: v <- v + Delta^2."""
    return {name: v[name] + delta[name].square() for name in delta}


def adam_second_moment(v: AdapterState, delta: AdapterState, beta_2: float) -> AdapterState:
    """FedAdam: v <- beta_2 v + (1 - beta_2) Delta^2."""
    return {name: beta_2 * v[name] + (1 - beta_2) * delta[name].square() for name in delta}


def yogi_second_moment(v: AdapterState, delta: AdapterState, beta_2: float) -> AdapterState:
    """FedYogi: v <- v - (1 - beta_2) Delta^2 sign(v - Delta^2)."""
    return {
        name: v[name] - (1 - beta_2) * delta[name].square() * (v[name] - delta[name].square()).sign() for name in delta
    }


def adaptive_step(x: AdapterState, m: AdapterState, v: AdapterState, eta: float, tau: float) -> AdapterState:
    """x <- x + eta m / (sqrt(v) + tau)."""
    return {name: x[name] + eta * m[name] / (v[name].sqrt() + tau) for name in x}


# Robust aggregators: they look at the clients' adapters alone (no example counts, which a client reports itself).


def coordinate_median(states: list[AdapterState]) -> AdapterState:
    """Per coordinate, the median of the clients' values; for an even count the mean of the middle two, as numpy
    and Flower (torch.median would take the lower one). Yin et al., 2018, https://arxiv.org/abs/1803.01498"""
    return _per_tensor(states, lambda name, stacked: _median(stacked))


def trimmed_mean(states: list[AdapterState], beta: float) -> AdapterState:
    """Per coordinate, the mean of the values left when int(beta * n) are cut from each end: the cut rounds down,
    as scipy's trim_mean and Flower's. Yin et al., 2018, https://arxiv.org/abs/1803.01498"""
    cut = int(beta * len(states))
    return _per_tensor(states, lambda name, stacked: stacked.sort(dim=0).values[cut : len(states) - cut].mean(dim=0))


def squared_distances(states: list[AdapterState]):
    """The n x n matrix of squared L2 distances between whole adapters, in float64."""
    import torch

    flat = torch.stack([torch.cat([state[name].double().reshape(-1) for name in sorted(state)]) for state in states])
    return torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist").square()


def krum_scores(distances, num_malicious: int):
    """Each update's score: the sum of its squared distances to its n - f - 2 nearest other updates (at least one,
    as Flower, so that Bulyan's repeated Krum works on its shrinking sets). Blanchard et al., 2017,
    https://arxiv.org/abs/1703.02757"""
    import torch

    count = distances.shape[0]
    neighbours = max(1, count - num_malicious - 2)
    to_others = distances + torch.diag(torch.full((count,), math.inf, dtype=distances.dtype))
    return to_others.sort(dim=1).values[:, :neighbours].sum(dim=1)


def krum_selection(states: list[AdapterState], num_malicious: int, num_selected: int) -> list[int]:
    """The indices of the `num_selected` updates with the lowest Krum scores, best first (Multi-Krum; Krum keeps
    one). Blanchard et al., 2017, https://arxiv.org/abs/1703.02757"""
    scores = krum_scores(squared_distances(states), num_malicious)
    return scores.argsort(stable=True)[:num_selected].tolist()


def bulyan(states: list[AdapterState], num_malicious: int) -> AdapterState:
    """Bulyan (El Mhamdi et al., 2018, https://arxiv.org/abs/1802.07927): Krum applied again and again to the
    updates not yet chosen selects theta = n - 2f of them; then per coordinate, the mean of the beta = theta - 2f
    selected values closest to their median. As flwr.server.strategy.aggregate.aggregate_bulyan (Flower's newer
    flwr.serverapp.strategy.Bulyan takes the theta best scores of a single Krum pass instead)."""
    distances = squared_distances(states)
    remaining, chosen = list(range(len(states))), []
    for _ in range(len(states) - 2 * num_malicious):
        scores = krum_scores(distances[remaining][:, remaining], num_malicious)
        chosen.append(remaining.pop(int(scores.argmin())))
    selected = [states[i] for i in chosen]
    median = coordinate_median(selected)
    closest = len(selected) - 2 * num_malicious
    return _per_tensor(selected, lambda name, stacked: _mean_of_closest(stacked, median[name].float(), closest))


def _median(stacked):
    count = stacked.shape[0]
    return stacked.sort(dim=0).values[(count - 1) // 2 : count // 2 + 1].mean(dim=0)


def _mean_of_closest(stacked, reference, count: int):
    """Per coordinate, the mean of the `count` values nearest to `reference`."""
    nearest = (stacked - reference).abs().argsort(dim=0, stable=True)[:count]
    return stacked.gather(0, nearest).mean(dim=0)


def _per_tensor(states: list[AdapterState], reduce) -> AdapterState:
    """reduce(name, the clients' values stacked on a new first axis in float32) for every tensor, cast back."""
    import torch

    return {
        name: reduce(name, torch.stack([state[name].float() for state in states])).to(reference.dtype)
        for name, reference in states[0].items()
    }
