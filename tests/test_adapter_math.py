"""Adapter arithmetic shared by clients and server: whole-adapter norm, clipping, Gaussian noise."""

from __future__ import annotations

import pytest
import torch

from flb.adapters.arithmetic import add, add_gaussian_noise_inplace, clip_inplace, l2_norm, subtract
from flb.privacy.secret_random import SecretRandom


def test_clip_bounds_the_whole_adapter_norm():
    state = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([0.0, 4.0])}  # norm 5
    before = clip_inplace(state, 1.0)
    assert before == pytest.approx(5.0)
    assert l2_norm(state) == pytest.approx(1.0)
    assert state["a"].tolist() == pytest.approx([0.6, 0.0])
    small = {"a": torch.tensor([0.3, 0.4])}
    clip_inplace(small, 1.0)
    assert small["a"].tolist() == pytest.approx([0.3, 0.4])


def test_noise_has_the_requested_std():
    state = {"w": torch.zeros(200_000)}
    add_gaussian_noise_inplace(state, 0.25, SecretRandom())
    assert state["w"].std().item() == pytest.approx(0.25, rel=0.01)
    assert state["w"].mean().item() == pytest.approx(0.0, abs=0.005)


def test_subtract_then_add_round_trips():
    left, right = {"a": torch.tensor([3.0, 1.0])}, {"a": torch.tensor([1.0, 1.0])}
    assert subtract(left, right)["a"].tolist() == [2.0, 0.0]
    assert add(subtract(left, right), right)["a"].tolist() == [3.0, 1.0]


def test_the_weighted_average_of_equal_tensors_is_that_tensor_bit_for_bit():
    from flb.adapters.arithmetic import weighted_average

    frozen = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    states = [({"a": frozen.clone(), "b": torch.full((2,), float(k))}, weight) for k, weight in enumerate((1, 1, 1))]
    result = weighted_average(states)
    assert torch.equal(result["a"], frozen)  # a float32 sum of thirds would round some elements
    assert result["b"].tolist() == pytest.approx([1.0, 1.0])
