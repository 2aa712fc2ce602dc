"""How LoRA factors are merged (`strategy.lora_aggregation`); pure functions over adapter states, no I/O.

A LoRA module changes its weight by (alpha / r) B A, so the mean of the clients' changes is (alpha / r)
mean_k(B_k A_k), which averaging A and B apart ("separate") does not give: mean(B) mean(A) != mean(B A).
- ffa: A stays frozen at its shared initialisation and only B trains, so mean_k(B_k A) = mean_k(B_k) A: the
  plain mean is exact (FFA-LoRA, Sun et al., 2024, https://arxiv.org/abs/2403.12313).
- svd: the mean of the products, re-factorised to rank r by truncated SVD: exact when that mean has rank <= r,
  otherwise the closest rank-r adapter to it (Eckart-Young), so never further from it than "separate".
- flexlora, hetlora: svd and separate for clients of different ranks (flb.adapters.ranks): the server pads each
  update with zero components to the global rank first, which leaves its B A as it was; a client then starts from
  the global adapter's first components, as many as its rank (under flexlora the largest singular values').
`aggregation_error` measures how far a global adapter's products are from the mean of the clients' products.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from flb.adapters.arithmetic import weighted_average
from flb.types import AdapterState

StatesAndWeights = list[tuple[AdapterState, float]]


def is_lora_a(name: str) -> bool:
    """peft names a linear module's factors <module>.lora_A.weight and <module>.lora_B.weight (parameters carry
    the adapter name too: <module>.lora_A.default.weight)."""
    return ".lora_A." in name


def lora_modules(state: AdapterState) -> list[tuple[str, str]]:
    """(A name, B name) of every LoRA module in `state`, sorted."""
    return [(name, name.replace(".lora_A.", ".lora_B.")) for name in sorted(state) if is_lora_a(name)]


def trained_part(state: AdapterState, lora_a_frozen: bool) -> AdapterState:
    """The tensors training changes: all of them, or all but LoRA A under ffa. The same tensor objects, so a
    change made in place reaches `state`."""
    return {name: tensor for name, tensor in state.items() if not (lora_a_frozen and is_lora_a(name))}


def mean_product(states_and_weights: StatesAndWeights, a_name: str, b_name: str):
    """sum_k w_k B_k A_k / sum_k w_k for one module, in float64 (out x in: small for LoRA'd attention)."""
    total = float(sum(weight for _, weight in states_and_weights))
    return sum(weight / total * _product(state, a_name, b_name) for state, weight in states_and_weights)


def aggregation_error(states_and_weights: StatesAndWeights, result: AdapterState) -> float:
    """||mean_k(B_k A_k) - B A|| / ||mean_k(B_k A_k)||, Frobenius over every LoRA module together, the mean
    weighted as given and B, A from `result`; 0 when both are zero, inf when only the mean is."""
    gap = norm = 0.0
    for a_name, b_name in lora_modules(result):
        mean = mean_product(states_and_weights, a_name, b_name)
        gap += float((mean - _product(result, a_name, b_name)).square().sum())
        norm += float(mean.square().sum())
    if norm == 0:
        return 0.0 if gap == 0 else math.inf
    return math.sqrt(gap / norm)


def svd_average(states_and_weights: StatesAndWeights) -> AdapterState:
    """Every module's weighted mean of B_k A_k, re-factorised to its rank r by truncated SVD in float64:
    B = U_r S_r^(1/2), A = S_r^(1/2) V_r^T, the singular values split evenly so neither factor dominates the next
    round's training; then cast back. Tensors that are not LoRA factors are averaged as they are. Deterministic
    for the same inputs and LAPACK build; another build may differ in the last bits (chain.verify allows for it)."""
    import torch

    first = states_and_weights[0][0]
    modules = lora_modules(first)
    factors = {name for module in modules for name in module}
    result = weighted_average(
        [({n: t for n, t in state.items() if n not in factors}, weight) for state, weight in states_and_weights]
    )
    for a_name, b_name in modules:
        rank = first[a_name].shape[0]
        u, s, vh = torch.linalg.svd(mean_product(states_and_weights, a_name, b_name), full_matrices=False)
        root = s[:rank].sqrt()
        result[b_name] = (u[:, :rank] * root).to(first[b_name].dtype).contiguous()
        result[a_name] = (root[:, None] * vh[:rank]).to(first[a_name].dtype).contiguous()
    return result


# The mean a mean-type strategy (fedavg, fedprox) takes in each mode: ffa needs none of its own, as the mean of
# the clients' identical A is that A, exactly (flb.adapters.arithmetic.weighted_average).
MEANS: dict[str, Callable[[StatesAndWeights], AdapterState]] = {
    "separate": weighted_average,
    "ffa": weighted_average,
    "svd": svd_average,
    # clients of different ranks (flb.adapters.ranks): each update zero-padded to the global rank first
    "flexlora": svd_average,  # FlexLoRA (Bai et al., 2024, https://arxiv.org/abs/2402.11505)
    "hetlora": weighted_average,  # HetLoRA (Cho et al., 2024, https://arxiv.org/abs/2401.06432), by examples
}


def _product(state: AdapterState, a_name: str, b_name: str):
    return state[b_name].double() @ state[a_name].double()
