"""The robust aggregators (median, trimmed_mean, krum, multi_krum, bulyan) against Flower 1.41's own, resisting a
sign-flipped update, norm bounding, and the settings refused at config time."""

from __future__ import annotations

import pytest
import torch

from flb.config import (
    BulyanSettings,
    KrumSettings,
    MultiKrumSettings,
    NormBoundingSettings,
    TrimmedMeanSettings,
    load_config,
)
from flb.errors import ConfigError
from flb.types import ClientUpdate
from server.strategy.bulyan import Bulyan
from server.strategy.fedavg import FedAvg
from server.strategy.krum import Krum
from server.strategy.median import Median
from server.strategy.multi_krum import MultiKrum
from server.strategy.norm_bounding import NormBounding
from server.strategy.trimmed_mean import TrimmedMean
from tests.flower_oracle import flower_aggregate, max_difference

SHAPES = {"layer.lora_A": (2, 3), "layer.lora_B": (3, 2), "bias": (4,)}


def client_states(count, seed=0):
    """`count` adapters around a common one, spread unevenly, the last far off (a client gone astray)."""
    generator = torch.Generator().manual_seed(seed)
    center = {name: torch.randn(shape, generator=generator) for name, shape in SHAPES.items()}
    states = [
        {name: t + torch.randn(t.shape, generator=generator) * (1 + client) / count for name, t in center.items()}
        for client in range(count)
    ]
    states[-1] = {name: t * 5 for name, t in states[-1].items()}
    return states


def updates_of(states, num_examples):
    return [
        ClientUpdate(i, 1, state, count, 0.0, 0.0, 0, "") for i, (state, count) in enumerate(zip(states, num_examples))
    ]


def aggregate(strategy, states, num_examples):
    zero = {name: torch.zeros(shape) for name, shape in SHAPES.items()}
    return strategy.aggregate(zero, updates_of(states, num_examples), 1, len(states))


EXAMPLES = [5, 1, 9, 2, 7, 3, 4]


@pytest.mark.parametrize("count", [5, 6])  # odd and even: numpy averages the middle two
def test_median_equals_flowers(count, flower_task):
    from flwr.serverapp.strategy import FedMedian

    states = client_states(count)
    expected = flower_aggregate(FedMedian(), 1, states, EXAMPLES[:count])
    assert max_difference(aggregate(Median(), states, EXAMPLES[:count]), expected) <= 1e-6


@pytest.mark.parametrize("count, beta", [(7, 0.2), (5, 0.3), (6, 0.45), (4, 0.0)])  # cuts int(beta * n): 1, 1, 2, 0
def test_trimmed_mean_equals_flowers(count, beta, flower_task):
    from flwr.serverapp.strategy import FedTrimmedAvg

    states = client_states(count)
    expected = flower_aggregate(FedTrimmedAvg(beta=beta), 1, states, EXAMPLES[:count])
    assert (
        max_difference(aggregate(TrimmedMean(TrimmedMeanSettings(beta=beta)), states, EXAMPLES[:count]), expected)
        <= 1e-6
    )


@pytest.mark.parametrize("count, num_malicious", [(5, 1), (7, 2), (3, 0)])
def test_krum_equals_flowers(count, num_malicious, flower_task):
    from flwr.serverapp.strategy import Krum as FlowerKrum

    states = client_states(count)
    expected = flower_aggregate(FlowerKrum(num_malicious_nodes=num_malicious), 1, states, EXAMPLES[:count])
    assert (
        max_difference(aggregate(Krum(KrumSettings(num_malicious=num_malicious)), states, EXAMPLES[:count]), expected)
        <= 1e-6
    )


@pytest.mark.parametrize("count, num_malicious, num_selected", [(5, 1, 3), (7, 2, 4), (6, 0, 2)])
def test_multi_krum_equals_flowers_given_equal_weights(count, num_malicious, num_selected, flower_task):
    """Flower weights the selected updates by example count; ours takes their plain mean (see multi_krum.py), which
    is Flower's when every count is the same."""
    from flwr.serverapp.strategy import MultiKrum as FlowerMultiKrum

    states = client_states(count)
    flower = FlowerMultiKrum(num_malicious_nodes=num_malicious, num_nodes_to_select=num_selected)
    expected = flower_aggregate(flower, 1, states, [1] * count)
    ours = MultiKrum(MultiKrumSettings(num_malicious=num_malicious, num_selected=num_selected))
    assert max_difference(aggregate(ours, states, EXAMPLES[:count]), expected) <= 1e-6


@pytest.mark.parametrize("count, num_malicious, seed", [(7, 1, 0), (7, 1, 1), (3, 0, 2), (11, 2, 3)])
def test_bulyan_equals_flowers_reference_aggregation(count, num_malicious, seed):
    from flwr.server.strategy.aggregate import aggregate_bulyan, aggregate_krum

    states = client_states(count, seed)
    results = [([t.numpy() for t in state.values()], n) for state, n in zip(states, EXAMPLES * 2)]
    expected = dict(zip(SHAPES, aggregate_bulyan(results, num_malicious, aggregate_krum, to_keep=0)))
    assert (
        max_difference(
            aggregate(Bulyan(BulyanSettings(num_malicious=num_malicious)), states, (EXAMPLES * 2)[:count]), expected
        )
        <= 1e-6
    )


ROBUST = {
    "median": lambda: Median(),
    "trimmed_mean": lambda: TrimmedMean(TrimmedMeanSettings(beta=0.2)),
    "krum": lambda: Krum(KrumSettings(num_malicious=1)),
    "multi_krum": lambda: MultiKrum(MultiKrumSettings(num_malicious=1, num_selected=3)),
    "bulyan": lambda: Bulyan(BulyanSettings(num_malicious=1)),
}


@pytest.mark.parametrize("name", sorted(ROBUST))
def test_a_sign_flipped_update_times_ten_moves_fedavg_but_not_a_robust_aggregator(name):
    """Six honest clients move the adapter by about +1 per coordinate; one sends -10 times that."""
    generator = torch.Generator().manual_seed(7)
    honest = [{"w": torch.ones(8) + 0.1 * torch.randn(8, generator=generator)} for _ in range(6)]
    honest_mean = torch.stack([state["w"] for state in honest]).mean(dim=0)
    states = honest + [{"w": -10 * honest_mean}]
    zero = {"w": torch.zeros(8)}

    def distance_from_honest(strategy):
        result = strategy.aggregate(zero, updates_of(states, [1] * 7), 1, 7)["w"]
        return float((result - honest_mean).norm() / honest_mean.norm())

    assert distance_from_honest(FedAvg()) > 1.0  # the mean is dragged past zero
    assert distance_from_honest(ROBUST[name]()) < 0.1


def test_norm_bounding_clips_each_change_then_aggregates_with_example_counts():
    global_adapter = {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([1.0, 1.0])}
    far = {"a": torch.tensor([31.0, 1.0]), "b": torch.tensor([1.0, 41.0])}  # change (30, 0, 0, 40): norm 50
    near = {"a": torch.tensor([2.0, 1.0]), "b": torch.tensor([1.0, 1.0])}  # change norm 1: left alone
    result = NormBounding(FedAvg(), NormBoundingSettings(max_norm=5.0)).aggregate(
        global_adapter, updates_of([far, near], [1, 3]), 1, 2
    )
    # far becomes (1 + 3, 1, 1, 1 + 4); weighted 1:3 with near (2, 1, 1, 1)
    assert result["a"].tolist() == pytest.approx([(4 + 3 * 2) / 4, 1.0])
    assert result["b"].tolist() == pytest.approx([1.0, (5 + 3 * 1) / 4])
    assert far["a"].tolist() == [31.0, 1.0]  # the update itself is left alone


def test_robust_aggregators_refuse_too_few_updates_when_used_directly():
    with pytest.raises(ConfigError, match="^strategy.bulyan.num_malicious: bulyan needs at least 7 updates, got 5"):
        aggregate(Bulyan(BulyanSettings(num_malicious=1)), client_states(5), EXAMPLES[:5])


THREE_CLIENTS = ["server.min_clients=3"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["strategy.name=dp_fixed_clipping", "strategy.wraps=fedadam"],
            "strategy.wraps: invalid value 'fedadam'; allowed: fedavg | fedprox with strategy.name=dp_fixed_clipping",
        ),
        (
            ["strategy.name=dp_adaptive_clipping", "strategy.wraps=median"],
            "strategy.wraps: invalid value 'median'; allowed: fedavg | fedprox with strategy.name=dp_adaptive_clipping",
        ),
        (["strategy.name=krum"], "strategy.krum.num_malicious: invalid value 0; allowed: f with 2f + 3 <= 1"),
        (
            THREE_CLIENTS + ["strategy.name=krum", "strategy.krum.num_malicious=1"],
            "strategy.krum.num_malicious: invalid value 1; allowed: f with 2f + 3 <= 3",
        ),
        (
            THREE_CLIENTS + ["strategy.name=norm_bounding", "strategy.wraps=bulyan", "strategy.bulyan.num_malicious=1"],
            "strategy.bulyan.num_malicious: invalid value 1; allowed: f with 4f + 3 <= 3",
        ),
        (
            THREE_CLIENTS + ["strategy.name=multi_krum", "strategy.multi_krum.num_selected=4"],
            "strategy.multi_krum.num_selected: invalid value 4; allowed: m <= 3",
        ),
        (
            THREE_CLIENTS + ["strategy.name=bulyan", "chain.scoring=quality"],
            "strategy.bulyan.num_malicious: invalid value 0; allowed: f with 4f + 3 <= 2, the fewest updates a round "
            "aggregates (server.min_clients - 1: chain.scoring=quality leaves one out)",
        ),
    ],
)
def test_settings_that_cannot_work_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert "strategy.wraps=fedavg" in str(info.value) or "raise server.min_clients or lower strategy." in str(
        info.value
    )


@pytest.mark.parametrize(
    "overrides",
    [
        THREE_CLIENTS + ["strategy.name=krum"],
        THREE_CLIENTS + ["strategy.name=bulyan"],
        [
            "num_clients=7",
            "clients_per_round=7",
            "server.min_clients=7",
            "strategy.name=multi_krum",
            "strategy.multi_krum.num_malicious=2",
            "strategy.multi_krum.num_selected=5",
        ],
    ],
)
def test_settings_at_the_limit_are_accepted(overrides):
    assert load_config(None, overrides).strategy.name in ("krum", "bulyan", "multi_krum")
