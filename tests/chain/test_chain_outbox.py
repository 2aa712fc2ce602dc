"""The outbox file: replayed state, no duplicates, a torn last line dropped."""
import pytest

from chain.outbox import CONFIRMED, QUEUED, Outbox

pytestmark = pytest.mark.chain


def test_state_survives_reopening(tmp_path):
    outbox = Outbox(tmp_path / "outbox.jsonl")
    assert outbox.add("round:1", "round", {"round": 1})
    assert not outbox.add("round:1", "round", {"round": 1})
    outbox.add("round:2", "round", {"round": 2})
    outbox.mark("round:1", CONFIRMED, tx="0xab", block=3)
    outbox.close()
    reopened = Outbox(tmp_path / "outbox.jsonl")
    assert reopened.get("round:1").status == CONFIRMED and reopened.get("round:1").tx == "0xab"
    assert reopened.next_pending().id == "round:2"


def test_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "outbox.jsonl"
    outbox = Outbox(path)
    outbox.add("round:1", "round", {"round": 1})
    outbox.close()
    with open(path, "a") as handle:
        handle.write('{"id": "round:1", "status": "conf')
    reopened = Outbox(path)
    assert reopened.get("round:1").status == QUEUED
    reopened.add("round:2", "round", {"round": 2})
    reopened.close()
    assert Outbox(path).count(QUEUED) == 2
