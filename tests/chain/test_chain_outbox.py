"""The outbox file: replayed state, no duplicates, a torn last line dropped, a lost record queued again."""

import pytest

from chain.errors import ChainError
from chain.outbox import CONFIRMED, QUEUED, SUBMITTED, Outbox

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


def test_records_go_out_in_the_order_queued(tmp_path):
    outbox = Outbox(tmp_path / "outbox.jsonl")
    for number in (3, 1, 2):
        outbox.add(f"round:{number}", "round", {"round": number})
    outbox.mark("round:3", SUBMITTED, tx="0x01")
    assert outbox.next_pending().id == "round:3"  # a submitted record is settled before the next is sent
    outbox.mark("round:3", CONFIRMED)
    assert outbox.next_pending().id == "round:1"


def test_a_lost_record_is_queued_again_with_its_note_and_history(tmp_path):
    outbox = Outbox(tmp_path / "outbox.jsonl")
    outbox.add("round:1", "round", {"round": 1})
    outbox.mark("round:1", SUBMITTED, tx="0x01")
    outbox.mark("round:1", CONFIRMED, block=5)
    outbox.mark("round:1", QUEUED, tx=None, error="lost by the chain (anvil); sent again")
    outbox.close()
    entry = Outbox(tmp_path / "outbox.jsonl").get("round:1")
    assert entry.status == QUEUED and entry.tx is None and entry.error.startswith("lost by the chain")
    assert entry.history == [QUEUED, SUBMITTED, CONFIRMED, QUEUED]


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


def test_a_corrupt_line_before_the_last_is_an_error(tmp_path):
    path = tmp_path / "outbox.jsonl"
    path.write_text(
        '{"id": "round:1", "kind": "round", "payload": {}, "status": "queued"}\nnot json\n'
        '{"id": "round:1", "status": "confirmed"}\n'
    )
    with pytest.raises(ChainError, match="line 2 is corrupt"):
        Outbox(path)
