"""Randomness that decides privacy, known only to the party that draws it.

A `SecretRandom` is a ChaCha20 keystream (pycryptodome, a cryptographically secure generator at
~400 MB/s here) keyed with 256 bits from the operating system (`secrets`). Its state is the key and
the position in the stream: a party saves it in its own private state so a resumed run draws
exactly what an uninterrupted one would, and never sends it to anyone. Everything else random
(initialisation, data order without DP) stays derived from the public `seed` (flb.seeding).
"""

from __future__ import annotations

import math
import secrets

import numpy as np

KEY_BYTES = 32
_NONCE = bytes(8)  # one key per generator, so a fixed nonce is safe; 8 bytes = ChaCha20's 64-bit block counter
_TWO_PI = 2 * math.pi


class SecretRandom:
    """A ChaCha20 stream: uniform floats, Gaussian tensors, Bernoulli masks and samples without replacement."""

    def __init__(self, key: bytes | None = None, position: int = 0):
        if key is not None and len(key) != KEY_BYTES:
            raise ValueError(f"SecretRandom: key must be {KEY_BYTES} bytes, got {len(key)}")
        self._key = key if key is not None else secrets.token_bytes(KEY_BYTES)
        self._position = position

    def state_dict(self) -> dict:
        """The generator's secret state; it belongs in its owner's private files only."""
        return {"key": self._key.hex(), "position": self._position}

    @classmethod
    def from_state(cls, state: dict) -> SecretRandom:
        return cls(bytes.fromhex(state["key"]), int(state["position"]))

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()` output, in place (every holder of this generator sees it)."""
        restored = SecretRandom.from_state(state)
        self._key, self._position = restored._key, restored._position

    def random_bytes(self, count: int) -> bytes:
        from Crypto.Cipher import ChaCha20

        cipher = ChaCha20.new(key=self._key, nonce=_NONCE)
        cipher.seek(self._position)
        self._position += count
        return cipher.encrypt(bytes(count))

    def uniform(self, count: int) -> np.ndarray:
        """`count` float64 values uniform on (0, 1], 53 random bits each."""
        words = np.frombuffer(self.random_bytes(8 * count), dtype="<u8")
        return ((words >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53

    def normal(self, shape, std: float, dtype=None):
        """A torch tensor of N(0, std^2) values (Box-Muller on the stream, computed in float64)."""
        import torch

        count = math.prod(shape)
        pairs = (count + 1) // 2
        u1, u2 = self.uniform(pairs), self.uniform(pairs)
        radius = np.sqrt(-2.0 * np.log(u1))
        values = np.concatenate([radius * np.cos(_TWO_PI * u2), radius * np.sin(_TWO_PI * u2)])[:count]
        return torch.from_numpy(values * std).reshape(shape).to(dtype or torch.float32)

    def bernoulli(self, count: int, probability: float) -> np.ndarray:
        """A boolean mask: each of `count` entries True with `probability`, independently (Poisson sampling)."""
        return self.uniform(count) < probability

    def sample(self, population: int, count: int) -> list[int]:
        """`count` distinct indices of range(population), uniformly, in increasing order."""
        keys = self.uniform(population)
        return sorted(int(i) for i in np.argsort(keys, kind="stable")[:count])

    def normal_scalar(self, std: float) -> float:
        u1, u2 = self.uniform(2)
        return float(std * math.sqrt(-2.0 * math.log(u1)) * math.cos(_TWO_PI * u2))
