"""Checks every client update before any strategy or score sees it; a bad one is rejected with its reason.

An update is taken only if it is what the sampled client was asked for (its id, this round), holds
finite tensors with the global adapter's names, shapes and dtypes (at the client's rank where model.lora.client_ranks
gives it one; under ffa, the global's LoRA A itself; under
comm.compression, once decoded: a payload that does not decode is rejected), claims a positive whole number of
examples no larger than the shard the client declared at round 0, matches its digest and its size in bytes, and,
when the run is recorded, carries the client's own signature over what the ledger will record. Then, over the round,
an update whose change from the global adapter it started from is far larger than the others' is rejected
(`server.max_update_norm`), so one client cannot take over the model.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace

import torch

from flb.adapters.arithmetic import l2_norm, subtract
from flb.adapters.compression import MalformedPayload, open_update, payload_bytes
from flb.adapters.lora_aggregation import is_lora_a
from flb.adapters.ranks import at_rank, padded
from flb.audit.digests import adapter_digest, update_content
from flb.errors import FLBError, UpdateRejected
from flb.privacy.disclosure import Disclosure
from flb.types import AdapterState, ClientUpdate

NORM_BOUND_MULTIPLE = 10.0


@dataclass(frozen=True)
class Expected:
    """What the update of one sampled client must be."""

    client_id: int
    round: int
    max_examples: int  # the shard size the client declared at round 0
    address: str | None = None  # its registered signing address; None when the run records nothing
    domain: object = None  # flb.audit.attestation.SigningDomain
    disclosure: Disclosure | None = None
    lora_a_frozen: bool = False  # ffa: its LoRA A must be the global adapter's, bit for bit
    compression: str = "none"  # comm.compression: how its tensors encode its adapter
    rank: int | None = None  # model.lora.client_ranks: the client's LoRA rank, when it may be below the global's


def validate_update(
    update: object,
    expected: Expected,
    global_adapter: AdapterState,
    global_digest: str,
    extras: AdapterState | None = None,
) -> ClientUpdate:
    """The update to aggregate, with `global_adapter` as its `base` (a compressed one opened: its decoded adapter as
    `tensors`, what it sent as `sent`; one of a lower `expected.rank` padded to the global rank with zero components,
    its base too);
    raise UpdateRejected unless `update` is a sound answer to `expected`. Its `extras` must match the names, shapes
    and dtypes of the `extras` the round sent (SCAFFOLD's variate; none for most strategies)."""
    who = f"client {expected.client_id}"
    if not isinstance(update, ClientUpdate):
        raise UpdateRejected(f"{who}: sent a {type(update).__name__}, not a ClientUpdate")
    if update.client_id != expected.client_id or update.round != expected.round:
        raise UpdateRejected(
            f"{who}: the update says client {update.client_id!r}, round {update.round!r}; "
            f"it was asked for round {expected.round}"
        )
    # a client of a lower rank sends the global adapter's first components, as many as its rank (flb.adapters.ranks)
    start = global_adapter if expected.rank is None else at_rank(global_adapter, expected.rank)
    opened = _opened(who, update.tensors, start, expected.compression)
    _check_tensors(who, opened, start)
    if expected.lora_a_frozen:
        _check_frozen_lora_a(who, opened, global_adapter)
    _check_tensors(who, update.extras, extras or {}, what="extras", source="the extras the round sent")
    count = update.num_examples
    if not (
        isinstance(count, numbers.Integral) and not isinstance(count, bool) and 1 <= count <= expected.max_examples
    ):
        raise UpdateRejected(
            f"{who}: claims {count!r} training examples; allowed: a whole number from 1 to the "
            f"{expected.max_examples} it declared at round 0"
        )
    sent = update_content(update.tensors, update.extras)
    if not isinstance(update.digest, str) or adapter_digest(sent) != update.digest:
        raise UpdateRejected(f"{who}: digest does not match its tensors")
    if update.num_bytes != payload_bytes(update.tensors):
        raise UpdateRejected(
            f"{who}: says its update is {update.num_bytes!r} bytes; its tensors are {payload_bytes(update.tensors)}"
        )
    if expected.address is not None:
        _check_attestation(who, update, expected, global_digest)
    if expected.compression == "none" and expected.rank is None:
        return replace(update, base=global_adapter)
    return replace(
        update, tensors=padded(opened, global_adapter), sent=update.tensors, base=padded(start, global_adapter)
    )


def _opened(who: str, tensors: object, global_adapter: AdapterState, compression: str) -> object:
    """The adapter `tensors` encode under comm.compression (the tensors themselves under none, checked next)."""
    if compression == "none":
        return tensors
    if not isinstance(tensors, dict) or not all(
        isinstance(t, torch.Tensor) and not t.is_meta and t.device.type == "cpu" for t in tensors.values()
    ):
        raise UpdateRejected(f"{who}: its update is not a dict of tensors with data on the CPU")
    try:
        return open_update(compression, tensors, global_adapter)
    except MalformedPayload as exc:
        raise UpdateRejected(f"{who}: its update does not decode under comm.compression {compression}: {exc}") from None


def _check_tensors(
    who: str, tensors: object, global_adapter: AdapterState, what: str = "tensors", source: str = "the global adapter"
) -> None:
    if not isinstance(tensors, dict):
        raise UpdateRejected(f"{who}: {what} are a {type(tensors).__name__}, not a dict of named tensors")
    missing = sorted(set(global_adapter) - set(tensors))
    extra = sorted(map(str, set(tensors) - set(global_adapter)))
    if missing or extra:
        raise UpdateRejected(
            f"{who}: the names of its {what} differ from {source} (missing {missing[:2]}, unexpected {extra[:2]})"
        )
    for key, reference in global_adapter.items():
        tensor, name = tensors[key], key if what == "tensors" else f"{what} {key}"
        if not isinstance(tensor, torch.Tensor) or tensor.is_meta or tensor.device.type != "cpu":
            raise UpdateRejected(f"{who}: {name} is not a tensor with data on the CPU ({type(tensor).__name__})")
        if tensor.shape != reference.shape:
            raise UpdateRejected(f"{who}: {name} has shape {tuple(tensor.shape)}, expected {tuple(reference.shape)}")
        if tensor.dtype != reference.dtype:
            raise UpdateRejected(f"{who}: {name} has dtype {tensor.dtype}, expected {reference.dtype}")
        if not torch.isfinite(tensor).all():
            raise UpdateRejected(f"{who}: {name} holds NaN or infinite values")


def _check_frozen_lora_a(who: str, tensors: AdapterState, global_adapter: AdapterState) -> None:
    changed = [
        name
        for name in sorted(global_adapter)
        if is_lora_a(name) and not torch.equal(tensors[name], global_adapter[name])
    ]
    if changed:
        raise UpdateRejected(
            f"{who}: {changed[0]} differs from the global adapter's; strategy.lora_aggregation ffa "
            "keeps LoRA A frozen, so train B only"
        )


def _check_attestation(who: str, update: ClientUpdate, expected: Expected, global_digest: str) -> None:
    from flb.audit.attestation import update_signer

    attestation, disclosure = update.attestation, expected.disclosure
    if attestation is None:
        raise UpdateRejected(f"{who}: the update is not signed; the ledger records only updates their client signed")
    if not disclosure.commit_updates and attestation.recorded_digest != update.digest:
        raise UpdateRejected(f"{who}: signed digest {attestation.recorded_digest!r} is not its update's")
    published = update.num_examples if disclosure.publish_num_examples else 0
    if attestation.recorded_num_examples != published:
        raise UpdateRejected(
            f"{who}: signed {attestation.recorded_num_examples!r} examples; the record needs {published}"
        )
    try:
        signer = update_signer(
            expected.domain,
            round=expected.round,
            previous_global_digest=global_digest,
            update_digest=attestation.recorded_digest,
            num_examples=published,
            signature=attestation.signature,
        )
    except (FLBError, ValueError, TypeError) as exc:
        raise UpdateRejected(f"{who}: unreadable signature ({exc})") from None
    if signer != expected.address:
        raise UpdateRejected(f"{who}: signed by {signer}, not by its registered address {expected.address}")


def update_norm_bound(norms: list[float], max_update_norm: float | None) -> float:
    """The configured bound, or NORM_BOUND_MULTIPLE x the lower median of the round's norms: with 2 updates that
    is the smaller one, so a single outlier never sets its own bound."""
    if max_update_norm is not None:
        return max_update_norm
    ordered = sorted(norms)
    return NORM_BOUND_MULTIPLE * ordered[(len(ordered) - 1) // 2]


def outliers(updates: list[ClientUpdate], max_update_norm: float | None) -> dict[int, str]:
    """Client id -> reason, for each validated update whose change to its `base` (the global adapter it started
    from) exceeds the round's bound."""
    if not updates:
        return {}
    norms = [l2_norm(subtract(u.tensors, u.base)) for u in updates]
    bound = update_norm_bound(norms, max_update_norm)
    source = (
        "server.max_update_norm"
        if max_update_norm is not None
        else f"{NORM_BOUND_MULTIPLE:g} x the round's lower-median norm"
    )
    return {
        u.client_id: f"client {u.client_id}: update norm {norm:.4g} exceeds {bound:.4g} ({source})"
        for u, norm in zip(updates, norms)
        if not norm <= bound or not math.isfinite(norm)
    }
