"""Contribution scores: the seed's formula, and supplied (quality) scores validated."""
import pytest

from chain.errors import ChainError
from chain.scoring import flb_scores, round_scores
from flb.types import RoundRecord

pytestmark = pytest.mark.chain


def record(**metrics):
    return RoundRecord(1, "00" * 32, [0, 1, 2], ["11" * 32] * 3, [5, 6, 7], [100, 200, 300], metrics)


def test_flb_is_uploads_times_bytes_plus_examples():
    assert flb_scores(record(), {0: 2, 1: 1}) == [2 * 100 + 5, 1 * 200 + 6, 0 * 300 + 7]


def test_quality_uses_supplied_scores():
    assert round_scores(record(scores=[0, 3, 9]), "quality", {}) == [0, 3, 9]


@pytest.mark.parametrize("scores", [None, [1, 2], [1, -2, 3], [1.5, 2, 3]])
def test_quality_rejects_missing_or_bad_scores(scores):
    with pytest.raises(ChainError, match="metrics\\['scores'\\]"):
        round_scores(record(scores=scores), "quality", {})
