"""Contribution scores: the seed's formula, and supplied (quality) scores validated."""

import pytest

from chain.errors import ChainError
from chain.scoring import flb_scores, round_scores
from flb.types import RoundRecord

pytestmark = pytest.mark.chain


def record(round_number=1, client_ids=(0, 1, 2), **metrics):
    n = len(client_ids)
    return RoundRecord(
        round=round_number,
        previous_global_digest="00" * 32,
        global_digest="11" * 32,
        client_ids=list(client_ids),
        addresses=[f"0x{c + 1:040x}" for c in client_ids],
        update_digests=["22" * 32] * n,
        num_examples=[5, 6, 7][:n],
        signatures=["0x"] * n,
        update_num_bytes=[100, 200, 300][:n],
        metrics=metrics,
        metrics_digest="33" * 32,
    )


def test_flb_is_uploads_times_bytes_plus_examples():
    assert flb_scores(record(), {0: 2, 1: 1}) == [2 * 100 + 5, 1 * 200 + 6, 0 * 300 + 7]


def test_flb_is_the_default_scoring():
    assert round_scores(record(), "flb", {2: 3}) == [5, 6, 3 * 300 + 7]


def test_quality_uses_supplied_scores():
    assert round_scores(record(scores=[0, 3, 9]), "quality", {}) == [0, 3, 9]


def test_a_round_without_clients_has_no_scores_to_supply():
    assert round_scores(record(round_number=0, client_ids=()), "quality", {}) == []


@pytest.mark.parametrize("scores", [None, [1, 2], [1, -2, 3], [1.5, 2, 3], [True, 2, 3]])
def test_quality_rejects_missing_or_bad_scores(scores):
    with pytest.raises(ChainError, match="round 1: chain.scoring is quality but metrics\\['scores'\\]"):
        round_scores(record(scores=scores), "quality", {})
