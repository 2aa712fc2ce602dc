"""Checks every client update before it is aggregated; a bad one is rejected with its reason."""
from __future__ import annotations

import torch

from flb.digests import adapter_digest
from flb.errors import UpdateRejected
from flb.types import AdapterState, ClientUpdate


def validate_update(update: ClientUpdate, global_adapter: AdapterState) -> None:
    """Raise UpdateRejected unless keys, shapes, dtypes, values, count and digest are all sound."""
    who = f"client {update.client_id}"
    missing = sorted(set(global_adapter) - set(update.tensors))
    extra = sorted(set(update.tensors) - set(global_adapter))
    if missing or extra:
        raise UpdateRejected(f"{who}: tensor names differ from the global adapter "
                             f"(missing {missing[:2]}, unexpected {extra[:2]})")
    for name, reference in global_adapter.items():
        tensor = update.tensors[name]
        if tensor.shape != reference.shape:
            raise UpdateRejected(f"{who}: {name} has shape {tuple(tensor.shape)}, expected {tuple(reference.shape)}")
        if tensor.dtype != reference.dtype:
            raise UpdateRejected(f"{who}: {name} has dtype {tensor.dtype}, expected {reference.dtype}")
        if not torch.isfinite(tensor).all():
            raise UpdateRejected(f"{who}: {name} holds NaN or infinite values")
    if update.num_examples < 1:
        raise UpdateRejected(f"{who}: claims {update.num_examples} training examples; at least 1 is needed")
    if adapter_digest(update.tensors) != update.digest:
        raise UpdateRejected(f"{who}: digest does not match its tensors")
