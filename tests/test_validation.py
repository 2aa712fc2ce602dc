"""Malformed updates are rejected with a reason; sound ones pass."""
from __future__ import annotations

import pytest
import torch

from flb.digests import adapter_digest
from flb.errors import UpdateRejected
from flb.types import ClientUpdate
from server.validation import validate_update

GLOBAL = {"x.lora_A.weight": torch.zeros(2, 3), "x.lora_B.weight": torch.zeros(3, 2)}


def make(tensors, num_examples=5, digest=None):
    return ClientUpdate(0, 1, tensors, num_examples, 0.0, 0.0, 0, digest or adapter_digest(tensors))


def test_sound_update_passes():
    validate_update(make({k: torch.ones_like(v) for k, v in GLOBAL.items()}), GLOBAL)


@pytest.mark.parametrize("tensors, reason", [
    ({"x.lora_A.weight": torch.full((2, 3), float("nan")), "x.lora_B.weight": torch.zeros(3, 2)}, "NaN"),
    ({"x.lora_A.weight": torch.zeros(2, 3)}, "missing"),
    ({"x.lora_A.weight": torch.zeros(2, 4), "x.lora_B.weight": torch.zeros(3, 2)}, "shape"),
    ({"x.lora_A.weight": torch.zeros(2, 3, dtype=torch.float16), "x.lora_B.weight": torch.zeros(3, 2)}, "dtype"),
])
def test_malformed_update_is_rejected_with_reason(tensors, reason):
    with pytest.raises(UpdateRejected, match=reason):
        validate_update(make(tensors), GLOBAL)


def test_digest_must_match_tensors():
    with pytest.raises(UpdateRejected, match="digest"):
        validate_update(make(dict(GLOBAL), digest="0" * 64), GLOBAL)
