"""Leave-one-out contribution scores on tiny tensors with a known loss."""

from __future__ import annotations

import torch

from flb.types import ClientUpdate
from server.contribution import leave_one_out_scores
from server.strategy.fedavg import FedAvg

TARGET = torch.tensor([1.0, 1.0])


def eval_loss(state):
    return float(((state["w"] - TARGET) ** 2).sum())


def update(client_id, values, num_examples=1):
    return ClientUpdate(client_id, 1, {"w": torch.tensor(values)}, num_examples, 0.0, 0.0, 8, "")


def test_helpful_clients_score_and_a_harmful_one_is_clamped_at_zero():
    updates = [update(0, [1.0, 1.0]), update(1, [0.0, 0.0]), update(2, [1.0, 1.0])]
    aggregated = FedAvg().aggregate({"w": torch.zeros(2)}, updates, 1, 3)
    scores, unscored = leave_one_out_scores(
        eval_loss, FedAvg(), {}, {"w": torch.zeros(2)}, updates, eval_loss(aggregated), 1
    )
    assert unscored == {}
    # all: mean [2/3, 2/3] -> loss 2/9; without 0 or 2: [0.5, 0.5] -> 0.5; without 1: [1, 1] -> 0
    assert scores == [round((0.5 - 2 / 9) * 1e6), 0, round((0.5 - 2 / 9) * 1e6)]


def test_single_client_is_compared_with_the_previous_global():
    previous = {"w": torch.tensor([3.0, 1.0])}  # loss 4
    updates = [update(0, [1.5, 1.0])]  # loss 0.25
    assert leave_one_out_scores(eval_loss, FedAvg(), {}, previous, updates, 0.25, 1) == ([3_750_000], {})


def test_a_non_finite_loss_scores_zero_with_a_reason_instead_of_crashing():
    updates = [update(0, [1.0, 1.0]), update(1, [1e30, 1e30])]  # the second overflows the loss to inf
    loss_all = eval_loss(FedAvg().aggregate({"w": torch.zeros(2)}, updates, 1, 2))
    scores, unscored = leave_one_out_scores(eval_loss, FedAvg(), {}, {"w": torch.zeros(2)}, updates, loss_all, 1)
    assert scores == [0, 0] and set(unscored) == {0, 1} and "not finite" in unscored[1]
