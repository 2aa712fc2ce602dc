"""flb.training: the learning rate across rounds."""
from __future__ import annotations

import math

import pytest

from flb.config import SFTSettings
from flb.training import round_learning_rate


def test_constant_is_the_same_every_round():
    settings = SFTSettings(learning_rate=2e-4)
    assert [round_learning_rate(settings, r, 5) for r in range(1, 6)] == [2e-4] * 5


def test_cosine_over_rounds_goes_from_learning_rate_to_min_learning_rate():
    """FlowerTune's protocol: 5e-5 in the first round to 1e-6 in the last, half-way at the middle round."""
    settings = SFTSettings(learning_rate=5e-5, lr_schedule="cosine_over_rounds", min_learning_rate=1e-6)
    rates = [round_learning_rate(settings, r, 201) for r in range(1, 202)]
    assert rates[0] == pytest.approx(5e-5) and rates[-1] == pytest.approx(1e-6)
    assert rates[100] == pytest.approx((5e-5 + 1e-6) / 2)
    assert rates[50] == pytest.approx(1e-6 + 0.5 * 4.9e-5 * (1 + math.cos(math.pi / 4)))
    assert all(a > b for a, b in zip(rates, rates[1:]))


def test_cosine_over_one_round_is_the_learning_rate():
    settings = SFTSettings(learning_rate=1e-3, lr_schedule="cosine_over_rounds", min_learning_rate=0.0)
    assert round_learning_rate(settings, 1, 1) == 1e-3
