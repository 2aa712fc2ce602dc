"""Aggregation math on tiny hand-checked tensors."""
from __future__ import annotations

import math

import pytest
import torch

from flb.digests import adapter_digest
from flb.errors import ConfigError
from flb.types import ClientUpdate
from server.strategy.aggregate import add_gaussian_noise_inplace, clip_inplace, l2_norm, weighted_average
from server.strategy.dp_fixed_clipping import DPFixedClipping
from server.strategy.fedavg import FedAvg


def update(client_id, values, num_examples):
    tensors = {"a": torch.tensor(values[:2], dtype=torch.float32), "b": torch.tensor(values[2:], dtype=torch.float32)}
    return ClientUpdate(client_id=client_id, round=1, tensors=tensors, num_examples=num_examples, train_loss=0.0,
                        wall_time_s=0.0, num_bytes=16, digest=adapter_digest(tensors))


def test_fedavg_weights_by_example_count():
    zero = update(9, [0, 0, 0, 0], 1).tensors
    result = FedAvg().aggregate(zero, [update(0, [1, 2, 3, 4], 1), update(1, [5, 6, 7, 8], 3)], round=1, num_sampled=2)
    # (1*[1,2,3,4] + 3*[5,6,7,8]) / 4
    assert result["a"].tolist() == [4.0, 5.0]
    assert result["b"].tolist() == [6.0, 7.0]


def test_weighted_average_keeps_dtype():
    states = [({"w": torch.tensor([1.0], dtype=torch.bfloat16)}, 1), ({"w": torch.tensor([3.0], dtype=torch.bfloat16)}, 1)]
    assert weighted_average(states)["w"].dtype == torch.bfloat16
    assert weighted_average(states)["w"].item() == 2.0


def test_clip_bounds_the_whole_adapter_norm():
    state = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([0.0, 4.0])}  # norm 5
    before = clip_inplace(state, 1.0)
    assert before == pytest.approx(5.0)
    assert l2_norm(state) == pytest.approx(1.0)
    assert state["a"].tolist() == pytest.approx([0.6, 0.0])
    small = {"a": torch.tensor([0.3, 0.4])}
    clip_inplace(small, 1.0)
    assert small["a"].tolist() == pytest.approx([0.3, 0.4])


def test_noise_has_the_requested_std():
    state = {"w": torch.zeros(200_000)}
    add_gaussian_noise_inplace(state, 0.25, torch.Generator().manual_seed(0))
    assert state["w"].std().item() == pytest.approx(0.25, rel=0.01)
    assert state["w"].mean().item() == pytest.approx(0.0, abs=0.005)


def test_dp_fixed_clipping_clips_deltas_and_averages_uniformly():
    global_adapter = update(9, [1, 1, 1, 1], 1).tensors
    updates = [update(0, [1 + 30, 1, 1, 1 + 40], 100), update(1, [1, 1, 1, 1], 1)]  # delta norms 50 and 0
    strategy = DPFixedClipping(FedAvg(), clip_norm=5.0, noise_multiplier=0.0, seed=0)
    result = strategy.aggregate(global_adapter, updates, round=1, num_sampled=2)
    # clipped deltas [3,0,0,4] and 0, averaged UNIFORMLY (not 100:1), then added to global
    assert result["a"].tolist() == pytest.approx([2.5, 1.0])
    assert result["b"].tolist() == pytest.approx([1.0, 3.0])


def test_dp_noise_std_is_z_c_over_m():
    global_adapter = {"w": torch.zeros(100_000)}
    updates = [ClientUpdate(i, 1, {"w": torch.zeros(100_000)}, 1, 0.0, 0.0, 0, "") for i in range(4)]
    strategy = DPFixedClipping(FedAvg(), clip_norm=2.0, noise_multiplier=1.5, seed=3)
    result = strategy.aggregate(global_adapter, updates, round=1, num_sampled=4)
    assert strategy.last_noise_std == pytest.approx(1.5 * 2.0 / 4)
    assert result["w"].std().item() == pytest.approx(0.75, rel=0.02)


def test_dp_warns_when_fewer_clients_return(caplog):
    global_adapter = {"w": torch.zeros(3)}
    updates = [ClientUpdate(0, 1, {"w": torch.ones(3)}, 1, 0.0, 0.0, 0, "")]
    DPFixedClipping(FedAvg(), clip_norm=1.0, noise_multiplier=0.0, seed=0).aggregate(global_adapter, updates, 1, 3)
    assert "1 of 3 sampled clients" in caplog.text


@pytest.mark.parametrize("kwargs, key", [({"clip_norm": 0.0, "noise_multiplier": 1.0}, "server.clip_threshold"),
                                         ({"clip_norm": 1.0, "noise_multiplier": -1.0}, "server.noise_multiplier")])
def test_dp_rejects_bad_parameters(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        DPFixedClipping(FedAvg(), seed=0, **kwargs)


def test_noise_is_reproducible_per_round():
    global_adapter = {"w": torch.zeros(10)}
    updates = [ClientUpdate(0, 1, {"w": torch.zeros(10)}, 1, 0.0, 0.0, 0, "")]
    make = lambda: DPFixedClipping(FedAvg(), clip_norm=1.0, noise_multiplier=1.0, seed=7)
    first = make().aggregate(global_adapter, updates, 2, 1)["w"]
    again = make().aggregate(global_adapter, updates, 2, 1)["w"]
    other_round = make().aggregate(global_adapter, updates, 3, 1)["w"]
    assert torch.equal(first, again) and not torch.equal(first, other_round)
    assert math.isfinite(first.sum().item())
