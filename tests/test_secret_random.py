"""The secret generator: right distributions, exact replay from its state, nothing derivable from a seed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flb.privacy.secret_random import KEY_BYTES, SecretRandom


def test_fresh_generators_differ_and_a_saved_state_replays_exactly():
    first, second = SecretRandom(), SecretRandom()
    state = json.loads(json.dumps(first.state_dict()))
    drawn = first.normal((1000,), 1.0)
    assert not np.array_equal(drawn.numpy(), second.normal((1000,), 1.0).numpy())
    assert np.array_equal(drawn.numpy(), SecretRandom.from_state(state).normal((1000,), 1.0).numpy())
    assert len(bytes.fromhex(state["key"])) == KEY_BYTES == 32


def test_loading_a_state_in_place_continues_the_stream_for_every_holder():
    generator = SecretRandom()
    saved = generator.state_dict()
    expected = generator.random_bytes(64)
    holder = SecretRandom()
    holder.load_state_dict(saved)
    assert holder.random_bytes(64) == expected


def test_normal_has_the_requested_moments():
    values = SecretRandom().normal((400_000,), 0.5).double()
    assert values.mean().item() == pytest.approx(0.0, abs=0.003)
    assert values.std().item() == pytest.approx(0.5, rel=0.005)
    assert abs(SecretRandom().normal_scalar(2.0)) < 20


def test_uniform_bernoulli_and_sample():
    generator = SecretRandom()
    uniform = generator.uniform(200_000)
    assert 0 < uniform.min() and uniform.max() <= 1 and uniform.mean() == pytest.approx(0.5, abs=0.005)
    assert generator.bernoulli(200_000, 0.1).mean() == pytest.approx(0.1, abs=0.003)
    counts = np.zeros(10)
    for _ in range(3000):
        chosen = generator.sample(10, 3)
        assert chosen == sorted(set(chosen)) and len(chosen) == 3
        counts[chosen] += 1
    assert counts.min() > 800 and counts.max() < 1000  # each index about 900 times


def test_a_key_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="32 bytes"):
        SecretRandom(b"short")
