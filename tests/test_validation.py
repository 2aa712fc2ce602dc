"""Update validation as an attacker meets it: malformed, spoofed, unsigned, mis-signed or outsized updates are
rejected with a reason before any strategy sees them; sound ones pass; nothing else is ever raised."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st

from flb.adapters.compression import compress_update
from flb.audit.attestation import SigningDomain, sign_update
from flb.audit.digests import adapter_digest, update_content
from flb.errors import UpdateRejected
from flb.privacy.disclosure import Disclosure
from flb.types import Attestation, ClientUpdate
from server.validation import NORM_BOUND_MULTIPLE, Expected, outliers, validate_update

GLOBAL = {"x.lora_A.weight": torch.zeros(2, 3), "x.lora_B.weight": torch.zeros(3, 2)}
GLOBAL_DIGEST = adapter_digest(GLOBAL)
CLIENT = Account.from_key(b"\x01" * 32)
DOMAIN = SigningDomain(31337, "0x" + "12" * 20)
PLAIN = Disclosure(commit_data=False, commit_updates=False, publish_num_examples=True, record_participants=True)
EXPECTED = Expected(client_id=0, round=1, max_examples=10)
SIGNED = Expected(client_id=0, round=1, max_examples=10, address=CLIENT.address, domain=DOMAIN, disclosure=PLAIN)


def make(tensors=None, num_examples=5, digest=None, client_id=0, round=1, signer=None, sign_round=1):
    tensors = tensors if tensors is not None else {k: torch.ones_like(v) for k, v in GLOBAL.items()}
    digest = digest or adapter_digest(tensors)
    attestation = None
    if signer is not None:
        signature = sign_update(
            signer,
            DOMAIN,
            round=sign_round,
            previous_global_digest=GLOBAL_DIGEST,
            update_digest=digest,
            num_examples=num_examples,
        )
        attestation = Attestation(digest, num_examples, signature)
    return ClientUpdate(
        client_id, round, tensors, num_examples, 0.0, 0.0, size_of(tensors), digest, attestation=attestation
    )


def size_of(tensors) -> int:
    """The bytes a sound client says its tensors are (0 for what is not tensors: rejected before the size matters)."""
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        return 0
    return sum(t.numel() * t.element_size() for t in tensors.values())


def check(update, expected=EXPECTED):
    validate_update(update, expected, GLOBAL, GLOBAL_DIGEST)


def test_sound_updates_pass():
    check(make())
    check(make(signer=CLIENT), SIGNED)


@pytest.mark.parametrize(
    "tensors, reason",
    [
        ({"x.lora_A.weight": torch.full((2, 3), float("nan")), "x.lora_B.weight": torch.zeros(3, 2)}, "NaN"),
        ({"x.lora_A.weight": torch.zeros(2, 3)}, "missing"),
        ({"x.lora_A.weight": torch.zeros(2, 4), "x.lora_B.weight": torch.zeros(3, 2)}, "shape"),
        ({"x.lora_A.weight": torch.zeros(2, 3, dtype=torch.float16), "x.lora_B.weight": torch.zeros(3, 2)}, "dtype"),
        ({"x.lora_A.weight": [[0.0] * 3] * 2, "x.lora_B.weight": torch.zeros(3, 2)}, "not a tensor"),
        ({"x.lora_A.weight": None, "x.lora_B.weight": torch.zeros(3, 2)}, "not a tensor"),
        ({"x.lora_A.weight": torch.zeros(2, 3, device="meta"), "x.lora_B.weight": torch.zeros(3, 2)}, "not a tensor"),
    ],
)
def test_malformed_tensors_are_rejected_with_reason(tensors, reason):
    with pytest.raises(UpdateRejected, match=reason):
        check(make(tensors, digest="0" * 64))


SENT = {"x.lora_A.weight": torch.ones(2, 3), "x.lora_B.weight": torch.ones(3, 2)}  # extras the round sent


@pytest.mark.parametrize(
    "extras, sent, reason",
    [
        ({}, SENT, r"the names of its extras differ from the extras the round sent \(missing \['x.lora_A.weight'"),
        (dict(SENT), {}, r"the names of its extras differ .+ unexpected \['x.lora_A.weight'"),
        ({**SENT, "x.lora_A.weight": torch.ones(3, 2)}, SENT, r"extras x.lora_A.weight has shape \(3, 2\), expected"),
        (
            {**SENT, "x.lora_B.weight": torch.full((3, 2), math.inf)},
            SENT,
            "extras x.lora_B.weight holds NaN or infinite",
        ),
        ({**SENT, "x.lora_B.weight": torch.ones(3, 2, dtype=torch.float64)}, SENT, "extras x.lora_B.weight has dtype"),
        ([1.0], SENT, "extras are a list, not a dict of named tensors"),
    ],
)
def test_extras_must_match_what_the_round_sent(extras, sent, reason):
    update = make()
    update.extras = extras
    with pytest.raises(UpdateRejected, match=f"^client 0: {reason}"):
        validate_update(update, EXPECTED, GLOBAL, GLOBAL_DIGEST, sent)
    update.extras = {name: tensor.clone() for name, tensor in sent.items()}
    update.digest = adapter_digest(update_content(update.tensors, update.extras))
    validate_update(update, EXPECTED, GLOBAL, GLOBAL_DIGEST, sent)


def test_extras_changed_after_the_client_signed_are_rejected():
    """The digest a client signs covers its extras (SCAFFOLD's delta c_i): changed in transit, or by a server that
    re-digests them, the update no longer matches its digest or its signature."""
    returned = {name: torch.full_like(tensor, 0.5) for name, tensor in SENT.items()}
    update = make(
        digest=adapter_digest(update_content({k: torch.ones_like(v) for k, v in GLOBAL.items()}, returned)),
        signer=CLIENT,
    )
    update.extras = dict(returned)
    validate_update(update, SIGNED, GLOBAL, GLOBAL_DIGEST, SENT)
    update.extras = {**returned, "x.lora_B.weight": torch.full((3, 2), 9.0)}
    with pytest.raises(UpdateRejected, match="digest does not match"):
        validate_update(update, SIGNED, GLOBAL, GLOBAL_DIGEST, SENT)
    update.digest = adapter_digest(update_content(update.tensors, update.extras))
    with pytest.raises(UpdateRejected, match="signed digest"):
        validate_update(update, SIGNED, GLOBAL, GLOBAL_DIGEST, SENT)


def test_something_that_is_not_an_update_is_rejected():
    with pytest.raises(UpdateRejected, match="not a ClientUpdate"):
        check({"tensors": GLOBAL})
    with pytest.raises(UpdateRejected, match="not a dict"):
        check(make(tensors=[1, 2], digest="0" * 64))


def test_a_client_that_misstates_its_update_size_is_rejected():
    """The size is what an flb contribution score multiplies: a client must not inflate it."""
    update = make()
    update.num_bytes *= 1000
    with pytest.raises(UpdateRejected, match=r"says its update is 48000 bytes; its tensors are 48$"):
        check(update)


INT8 = Expected(client_id=0, round=1, max_examples=10, compression="int8")


def test_a_compressed_update_is_opened_from_the_global_adapter_and_keeps_what_was_sent():
    trained = {name: torch.full_like(tensor, 0.5) for name, tensor in GLOBAL.items()}
    sent, _ = compress_update("int8", trained, GLOBAL, {}, 0.1)
    accepted = validate_update(make(sent), INT8, GLOBAL, GLOBAL_DIGEST)
    assert all(torch.equal(accepted.tensors[name], trained[name]) for name in GLOBAL)  # 0.5 = code 127 x 0.5 / 127
    assert accepted.sent is sent and accepted.as_sent is sent and accepted.digest == adapter_digest(sent)


@pytest.mark.parametrize(
    "spoil, reason",
    [
        (lambda sent: sent.pop("x.lora_A.weight#absmax"), "x.lora_A.weight#absmax is missing"),
        (lambda sent: sent.update({"x.lora_A.weight#int8": torch.full((6,), -128, dtype=torch.int8)}), "-128"),
        (lambda sent: sent.update({"x.lora_B.weight#absmax": torch.tensor([math.nan])}), "NaN"),
        (lambda sent: sent.update({"x.lora_B.weight#absmax": [1.0]}), "not a dict of tensors"),
    ],
)
def test_a_compressed_update_that_does_not_decode_is_rejected(spoil, reason):
    sent, _ = compress_update("int8", {k: torch.ones_like(v) for k, v in GLOBAL.items()}, GLOBAL, {}, 0.1)
    spoil(sent)
    with pytest.raises(UpdateRejected, match=f"^client 0: .*{reason}"):
        validate_update(make(sent, digest="0" * 64), INT8, GLOBAL, GLOBAL_DIGEST)


def test_an_uncompressed_adapter_is_not_an_int8_update():
    reason = "does not decode under comm.compression int8: int8 payload: x.lora_A.weight#absmax is missing"
    with pytest.raises(UpdateRejected, match=reason):
        validate_update(make(), INT8, GLOBAL, GLOBAL_DIGEST)


def test_digest_must_match_tensors():
    with pytest.raises(UpdateRejected, match="digest"):
        check(make(digest="0" * 64))


@pytest.mark.parametrize("client_id, round", [(1, 1), (0, 0), ("0", 1)])
def test_a_spoofed_client_or_a_stale_round_is_rejected(client_id, round):
    with pytest.raises(UpdateRejected, match="asked for round 1"):
        check(make(client_id=client_id, round=round))


@pytest.mark.parametrize("count", [0, -1, 11, 10**12, math.nan, math.inf, "5", True, 2.5])
def test_the_example_count_must_be_a_whole_number_within_the_declared_shard(count):
    with pytest.raises(UpdateRejected, match="training examples"):
        check(make(num_examples=count))


@pytest.mark.parametrize(
    "signer, sign_round, reason",
    [
        (None, 1, "not signed"),
        (Account.from_key(b"\x02" * 32), 1, "not by its registered address"),
        (CLIENT, 2, "not by its registered address"),  # a signature replayed from another round
    ],
)
def test_an_update_the_client_did_not_sign_is_rejected(signer, sign_round, reason):
    with pytest.raises(UpdateRejected, match=reason):
        check(make(signer=signer, sign_round=sign_round), SIGNED)


def test_a_signed_statement_must_match_the_update():
    update = make(signer=CLIENT)
    update.attestation = Attestation("ab" * 32, update.attestation.recorded_num_examples, update.attestation.signature)
    with pytest.raises(UpdateRejected, match="is not its update's"):
        check(update, SIGNED)
    hidden = Expected(**{**SIGNED.__dict__, "disclosure": Disclosure(True, True, False, True)})
    with pytest.raises(UpdateRejected, match="the record needs 0"):
        check(make(signer=CLIENT), hidden)


def shifted(client_id, scale, base=GLOBAL):
    """A validated update whose every element is `scale` above `base`, the global adapter it started from."""
    return replace(
        make({k: b + scale for k, b in base.items()}, client_id=client_id),
        base=base,
    )


def test_an_outsized_update_is_rejected_even_against_one_honest_peer():
    honest, attacker = shifted(0, 0.01), shifted(1, 1e6)
    rejected = outliers([honest, attacker], None)
    assert set(rejected) == {1} and "update norm" in rejected[1] and "lower-median" in rejected[1]
    assert outliers([honest, shifted(1, 0.02)], None) == {}
    assert outliers([shifted(0, 1e30), shifted(1, 0.01), shifted(2, 0.01)], None).keys() == {0}
    assert outliers([honest], None) == {}


def test_a_configured_norm_bound_applies_to_every_update():
    updates = [shifted(0, 0.01), shifted(1, 1.0)]
    assert set(outliers(updates, max_update_norm=0.5)) == {1}
    assert NORM_BOUND_MULTIPLE == 10.0


def test_an_update_is_measured_from_the_global_adapter_it_started_from():
    older = {k: v + 5.0 for k, v in GLOBAL.items()}  # fedbuff: a client that started from another global adapter
    assert outliers([shifted(0, 0.01), shifted(1, 0.01, base=older), shifted(2, 0.01)], None) == {}
    assert set(outliers([shifted(0, 0.01), shifted(1, 0.5, base=older), shifted(2, 0.01)], None)) == {1}


values = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.booleans(),
    st.lists(st.floats(), max_size=3),
)
tensors = st.one_of(
    st.builds(lambda scale: torch.full((2, 3), scale), st.floats(allow_nan=True, allow_infinity=True, width=32)),
    st.sampled_from([torch.zeros(3, 2), torch.zeros(2, 3, dtype=torch.float64), torch.zeros(6), torch.zeros(2, 3)]),
    values,
)


@settings(max_examples=150, deadline=None)
@given(
    a=tensors,
    b=tensors,
    extra=st.booleans(),
    count=st.one_of(values, st.integers(1, 10)),
    client_id=st.one_of(values, st.just(0)),
    round=st.one_of(values, st.just(1)),
    real_digest=st.booleans(),
)
def test_fuzzed_updates_are_rejected_or_sound(a, b, extra, count, client_id, round, real_digest):
    update_tensors = {"x.lora_A.weight": a, "x.lora_B.weight": b, **({"y": torch.zeros(1)} if extra else {})}
    all_tensors = all(isinstance(t, torch.Tensor) for t in update_tensors.values())
    digest = adapter_digest(update_tensors) if real_digest and all_tensors else "0" * 64
    update = ClientUpdate(client_id, round, update_tensors, count, 0.0, 0.0, 0, digest)
    try:
        check(update)
    except UpdateRejected as exc:
        assert "\n" not in str(exc)
        return
    # accepted: then it is exactly what item 1 of the issue allows
    assert client_id == 0 and round == 1 and isinstance(count, int) and not isinstance(count, bool) and 1 <= count <= 10
    assert all(isinstance(t, torch.Tensor) and torch.isfinite(t).all() for t in update_tensors.values())
    assert digest == adapter_digest(update_tensors)


def test_under_ffa_an_update_that_changed_lora_a_is_rejected():
    frozen = Expected(client_id=0, round=1, max_examples=10, lora_a_frozen=True)
    trained_b = {**GLOBAL, "x.lora_B.weight": torch.ones(3, 2)}
    check(make(trained_b), frozen)
    check(make())  # without ffa, A may change
    with pytest.raises(
        UpdateRejected,
        match="x.lora_A.weight differs from the global adapter's; strategy.lora_aggregation ffa keeps LoRA A frozen",
    ):
        check(make(), frozen)
