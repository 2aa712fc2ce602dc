"""Flower 1.41's own strategies driven directly on numpy arrays: the oracles our strategies are checked against."""

from __future__ import annotations

import numpy as np


def flower_replies(states: list[dict], num_examples: list[int]) -> list:
    """One train reply per client, as a ClientApp sends it: its arrays and its example count."""
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

    return [
        Message(
            content=RecordDict(
                {
                    "arrays": ArrayRecord({k: Array(v.numpy()) for k, v in state.items()}),
                    "metrics": MetricRecord({"num-examples": count}),
                }
            ),
            dst_node_id=1,
            message_type="train",
        )
        for state, count in zip(states, num_examples)
    ]


def flower_aggregate(strategy, round: int, states: list[dict], num_examples: list[int]) -> dict[str, np.ndarray]:
    arrays, _ = strategy.aggregate_train(round, flower_replies(states, num_examples))
    return {name: array.numpy() for name, array in arrays.items()}


def max_difference(ours: dict, flower: dict) -> float:
    assert sorted(ours) == sorted(flower)
    return max(
        float(np.abs(ours[name].double().numpy() - np.asarray(flower[name], dtype=np.float64)).max()) for name in ours
    )
