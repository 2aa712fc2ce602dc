"""flb.run.comm: bytes counted from the tensors themselves, and the budget warning."""

from __future__ import annotations

import logging

import torch

from flb.run.comm import CommTracker, tensor_bytes
from flb.types import ClientUpdate


def update(tensors, extras=None, claimed_bytes=1):
    return ClientUpdate(
        client_id=0,
        round=1,
        tensors=tensors,
        num_examples=1,
        train_loss=0.0,
        wall_time_s=0.0,
        num_bytes=claimed_bytes,
        digest="",
        extras=extras or {},
    )


def test_tensor_bytes_are_elements_times_element_size():
    assert (
        tensor_bytes({"a": torch.zeros(3, 4), "b": torch.zeros(5, dtype=torch.bfloat16)}, {"c": torch.zeros(2)})
        == 3 * 4 * 4 + 5 * 2 + 2 * 4
    )


def test_a_round_counts_what_was_sent_to_each_sampled_client_and_what_came_back_not_what_a_client_claims():
    tracker = CommTracker()
    sent, extras = {"w": torch.zeros(10)}, {"c": torch.zeros(10)}
    row = tracker.count(
        1,
        sent,
        extras,
        3,
        [update({"w": torch.zeros(10)}, {"c": torch.zeros(10)}, claimed_bytes=1), update({"w": torch.zeros(10)})],
    )
    assert row == {
        "comm_down_bytes": 3 * 80,
        "comm_up_bytes": 80 + 40,
        "comm_total_down_bytes": 240,
        "comm_total_up_bytes": 120,
    }
    assert tracker.count(2, sent, {}, 1, [])["comm_total_down_bytes"] == 240 + 40


def test_the_budget_warns_once_when_passed_and_not_again_after_a_resume(caplog):
    tracker = CommTracker(budget_mb=0.000_1)  # 100 bytes
    sent = {"w": torch.zeros(10)}  # 40 bytes
    with caplog.at_level(logging.WARNING, logger="flb.run.comm"):
        rows = [tracker.count(r, sent, {}, 1, []) for r in (1, 2, 3, 4)]
    assert [r.message for r in caplog.records] == [
        "round 3: 0.00 MB sent to and from clients so far, past comm.budget_mb = 0.0001"
    ]
    caplog.clear()
    resumed = CommTracker(budget_mb=0.000_1)
    resumed.restore(rows[-1])
    with caplog.at_level(logging.WARNING, logger="flb.run.comm"):
        assert resumed.count(5, sent, {}, 1, [])["comm_total_down_bytes"] == 200
    assert not caplog.records
