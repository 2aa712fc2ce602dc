"""Every random choice is derived from (seed, round, ...) so a resumed run replays it exactly."""

from __future__ import annotations

import numpy as np


def derived_seed(*parts: int) -> int:
    """A 32-bit seed determined by `parts` alone (e.g. run seed, round, client id)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def round_rng(seed: int, round: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng(derived_seed(seed, round, purpose))
