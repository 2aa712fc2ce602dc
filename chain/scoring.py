"""Contribution scores, in uint256 points (integers >= 0), one per client of a round.

`chain.scoring: flb` is the seed's formula and needs nothing but the RoundRecord. `quality` is
each client's marginal eval-loss improvement (leave-one-out); it needs the model, so the round
loop computes it (server/contribution.py) and passes it in `RoundRecord.metrics["scores"]`; the
ledger only validates and records it."""

from __future__ import annotations

from collections.abc import Mapping

from chain.errors import ChainError
from flb.types import RoundRecord


def round_scores(record: RoundRecord, scoring: str, uploads: Mapping[int, int]) -> list[int]:
    if scoring == "flb":
        return flb_scores(record, uploads)
    return supplied_scores(record)


def flb_scores(record: RoundRecord, uploads: Mapping[int, int]) -> list[int]:
    """Number of the client's data uploads x its update's size in bytes + its training examples."""
    return [
        uploads.get(client_id, 0) * num_bytes + num_examples
        for client_id, num_bytes, num_examples in zip(record.client_ids, record.update_num_bytes, record.num_examples)
    ]


def supplied_scores(record: RoundRecord) -> list[int]:
    if not record.client_ids:  # round 0 and skipped rounds: nothing to score
        return []
    scores = record.metrics.get("scores")
    valid = (
        isinstance(scores, list)
        and len(scores) == len(record.client_ids)
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in scores)
    )
    if not valid:
        raise ChainError(
            f"round {record.round}: chain.scoring is quality but metrics['scores'] is {scores!r}; "
            "the round loop must pass one integer >= 0 per client (server/contribution.py)"
        )
    return list(scores)
