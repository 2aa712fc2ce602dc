"""Aggregation math and the server-side DP strategies on tiny hand-checked tensors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from flb.adapters.arithmetic import weighted_average
from flb.audit.digests import adapter_digest
from flb.config import ServerDPSettings, ServerSettings, load_config
from flb.errors import ConfigError
from flb.privacy.secret_random import SecretRandom
from flb.types import ClientUpdate
from server.strategy.dp_adaptive_clipping import DPAdaptiveClipping
from server.strategy.dp_fixed_clipping import DPFixedClipping
from server.strategy.fedavg import FedAvg


def update(client_id, values, num_examples):
    tensors = {"a": torch.tensor(values[:2], dtype=torch.float32), "b": torch.tensor(values[2:], dtype=torch.float32)}
    return ClientUpdate(
        client_id=client_id,
        round=1,
        tensors=tensors,
        num_examples=num_examples,
        train_loss=0.0,
        wall_time_s=0.0,
        num_bytes=16,
        digest=adapter_digest(tensors),
    )


def dp_fixed(clip_norm, noise_multiplier, sample_rate=1.0, random=None):
    settings = ServerSettings(clip_threshold=clip_norm, noise_multiplier=noise_multiplier)
    return DPFixedClipping(FedAvg(), settings, sample_rate=sample_rate, random=random or SecretRandom())


def test_fedavg_weights_by_example_count():
    zero = update(9, [0, 0, 0, 0], 1).tensors
    result = FedAvg().aggregate(zero, [update(0, [1, 2, 3, 4], 1), update(1, [5, 6, 7, 8], 3)], round=1, num_sampled=2)
    # (1*[1,2,3,4] + 3*[5,6,7,8]) / 4
    assert result["a"].tolist() == [4.0, 5.0]
    assert result["b"].tolist() == [6.0, 7.0]


def test_weighted_average_keeps_dtype():
    states = [
        ({"w": torch.tensor([1.0], dtype=torch.bfloat16)}, 1),
        ({"w": torch.tensor([3.0], dtype=torch.bfloat16)}, 1),
    ]
    assert weighted_average(states)["w"].dtype == torch.bfloat16
    assert weighted_average(states)["w"].item() == 2.0


def test_dp_fixed_clipping_clips_deltas_and_averages_uniformly():
    global_adapter = update(9, [1, 1, 1, 1], 1).tensors
    updates = [update(0, [1 + 30, 1, 1, 1 + 40], 100), update(1, [1, 1, 1, 1], 1)]  # delta norms 50 and 0
    strategy = dp_fixed(5.0, 0.0)
    result = strategy.aggregate(global_adapter, updates, round=1, num_sampled=2)
    # clipped deltas [3,0,0,4] and 0, averaged UNIFORMLY (not 100:1), then added to global
    assert result["a"].tolist() == pytest.approx([2.5, 1.0])
    assert result["b"].tolist() == pytest.approx([1.0, 3.0])


def test_dp_noise_std_is_z_c_over_m():
    global_adapter = {"w": torch.zeros(100_000)}
    updates = [ClientUpdate(i, 1, {"w": torch.zeros(100_000)}, 1, 0.0, 0.0, 0, "") for i in range(4)]
    strategy = dp_fixed(2.0, 1.5)
    result = strategy.aggregate(global_adapter, updates, round=1, num_sampled=4)
    assert strategy.last_noise_std == pytest.approx(1.5 * 2.0 / 4)
    assert result["w"].std().item() == pytest.approx(0.75, rel=0.02)


def test_dp_warns_when_fewer_clients_return(caplog):
    global_adapter = {"w": torch.zeros(3)}
    updates = [ClientUpdate(0, 1, {"w": torch.ones(3)}, 1, 0.0, 0.0, 0, "")]
    strategy = dp_fixed(1.0, 0.0)
    strategy.aggregate(global_adapter, updates, 1, 3)
    assert "1 of 3 sampled clients" in caplog.text


@pytest.mark.parametrize(
    "override, message",
    [
        ("server.clip_threshold=0", "server.clip_threshold: invalid value 0.0; allowed: a number > 0"),
        ("server.noise_multiplier=-1", "server.noise_multiplier: invalid value -1.0; allowed: a number >= 0"),
        ("server.dp.delta=1", "server.dp.delta: invalid value 1.0; allowed: a number in (0, 1)"),
    ],
)
def test_the_config_refuses_bad_dp_settings_in_one_line(override, message):
    """DPFixedClipping trusts its ServerSettings: the one check is the config's."""
    with pytest.raises(ConfigError) as info:
        load_config(None, ["strategy.name=dp_fixed_clipping", override])
    assert str(info.value) == message


def test_noise_comes_from_the_servers_secret_generator_alone():
    """Two servers with the same config draw different noise; the same secret state draws the same noise."""
    global_adapter = {"w": torch.zeros(10)}
    updates = [ClientUpdate(0, 1, {"w": torch.zeros(10)}, 1, 0.0, 0.0, 0, "")]
    secret = SecretRandom()
    state = secret.state_dict()
    first = dp_fixed(1.0, 1.0, random=secret).aggregate(global_adapter, updates, 2, 1)["w"]
    replayed = dp_fixed(1.0, 1.0, random=SecretRandom.from_state(state)).aggregate(global_adapter, updates, 2, 1)["w"]
    stranger = dp_fixed(1.0, 1.0).aggregate(global_adapter, updates, 2, 1)["w"]
    assert torch.equal(first, replayed) and not torch.equal(first, stranger)
    assert math.isfinite(first.sum().item())


def test_epsilon_against_someone_who_knows_the_participants_has_q_one():
    from opacus.accountants import RDPAccountant

    strategy = dp_fixed(1.0, 1.1, sample_rate=0.25)
    for round_number, clients in ((1, [0, 1]), (2, [0, 2]), (3, [0, 1])):
        updates = [ClientUpdate(i, round_number, {"w": torch.zeros(4)}, 1, 0.0, 0.0, 0, "") for i in clients]
        strategy.aggregate({"w": torch.zeros(4)}, updates, round_number, 2)
    known = strategy.privacy_spent()["known_participants"]
    reference = RDPAccountant()
    reference.history = [(1.1, 1.0, 3)]  # client 0 took part in all 3 rounds
    assert known["epsilon"] == reference.get_epsilon(delta=1e-5) > strategy.privacy_spent()["epsilon"]
    assert known["history"] == [[1.1, 1.0, 3]]


def zero_updates(count, size=4):
    return [ClientUpdate(i, 1, {"w": torch.zeros(size)}, 1, 0.0, 0.0, 0, "") for i in range(count)]


def test_server_epsilon_is_opacus_rdp_over_rounds_at_q():
    from opacus.accountants import RDPAccountant

    strategy = dp_fixed(1.0, 1.1, sample_rate=0.25)
    reference = RDPAccountant()
    for round_number in range(1, 6):
        strategy.aggregate({"w": torch.zeros(4)}, zero_updates(2), round_number, 2)
        reference.step(noise_multiplier=1.1, sample_rate=0.25)
        spent = strategy.privacy_spent()
        assert spent["epsilon"] == reference.get_epsilon(delta=1e-5)
    assert spent["steps"] == 5 and spent["sample_rate"] == 0.25 and spent["mechanism"] == "dp_fixed_clipping"


def test_server_accountant_survives_a_json_round_trip():
    first = dp_fixed(1.0, 0.8, sample_rate=0.5)
    for round_number in (1, 2):
        first.aggregate({"w": torch.zeros(4)}, zero_updates(2), round_number, 2)
    resumed = dp_fixed(1.0, 0.8, sample_rate=0.5)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert resumed.privacy_spent() == first.privacy_spent()
    first.aggregate({"w": torch.zeros(4)}, zero_updates(2), 3, 2)
    resumed.aggregate({"w": torch.zeros(4)}, zero_updates(2), 3, 2)
    assert resumed.privacy_spent() == first.privacy_spent()


def adaptive(initial_clip_norm, noise_multiplier=1.0, clipped_count_stddev=5.0):
    dp = ServerDPSettings(target_quantile=0.5, clip_learning_rate=0.5, clipped_count_stddev=clipped_count_stddev)
    settings = ServerSettings(clip_threshold=initial_clip_norm, noise_multiplier=noise_multiplier, dp=dp)
    return DPAdaptiveClipping(FedAvg(), settings, sample_rate=1.0, random=SecretRandom())


@pytest.mark.parametrize("start", [0.01, 100.0])  # the median norm is 1: 100x too small and 100x too large
def test_adaptive_clipping_leaves_the_target_fraction_unclipped(start):
    norms = np.random.default_rng(0)
    strategy = adaptive(start)
    global_adapter = {"w": torch.zeros(1)}
    for round_number in range(1, 51):
        drawn = norms.lognormal(0.0, 1.0, size=100)  # sigma_b = m / 20, as Andrew et al. suggest
        updates = [
            ClientUpdate(i, round_number, {"w": torch.tensor([n], dtype=torch.float32)}, 1, 0.0, 0.0, 0, "")
            for i, n in enumerate(drawn)
        ]
        strategy.aggregate(global_adapter, updates, round_number, len(updates))
    population = norms.lognormal(0.0, 1.0, size=100_000)
    assert abs((population <= strategy.clip_norm).mean() - 0.5) < 0.1


def test_adaptive_clipping_splits_the_noise_and_checkpoints_its_norm():
    strategy = adaptive(1.0, noise_multiplier=1.0, clipped_count_stddev=1.0)
    assert strategy.update_noise_multiplier == pytest.approx((1.0 - 0.25) ** -0.5)
    strategy.aggregate({"w": torch.zeros(4)}, zero_updates(3), 1, 3)
    assert strategy.clip_norm != 1.0
    resumed = adaptive(1.0, noise_multiplier=1.0, clipped_count_stddev=1.0)
    resumed.load_state_dict(json.loads(json.dumps(strategy.state_dict())))
    assert resumed.clip_norm == strategy.clip_norm and resumed.privacy_spent() == strategy.privacy_spent()
    assert resumed.privacy_spent()["noise_multiplier"] == 1.0  # the accountant composes the combined z


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["server.noise_multiplier=1.0", "server.dp.clipped_count_stddev=0.5"],
            "server.noise_multiplier: invalid value 1.0; allowed: a number < 2 * server.dp.clipped_count_stddev = 1 "
            "with dp_adaptive_clipping (or raise server.dp.clipped_count_stddev)",
        ),
        (
            ["server.dp.target_quantile=1.0"],
            "server.dp.target_quantile: invalid value 1.0; allowed: a number in (0, 1)",
        ),
        (["server.dp.clip_learning_rate=0"], "server.dp.clip_learning_rate: invalid value 0.0; allowed: a number > 0"),
        (
            ["server.dp.clipped_count_stddev=-1"],
            "server.dp.clipped_count_stddev: invalid value -1.0; allowed: a number >= 0",
        ),
    ],
)
def test_the_config_refuses_bad_adaptive_clipping_settings_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["strategy.name=dp_adaptive_clipping", *overrides])
    assert str(info.value) == message


def test_the_noise_split_is_checked_only_for_adaptive_clipping():
    """z < 2 sigma_b is adaptive clipping's rule (its registry check), not fixed clipping's."""
    split = ["server.noise_multiplier=1.0", "server.dp.clipped_count_stddev=0.5"]
    assert load_config(None, ["strategy.name=dp_fixed_clipping", *split]).server.noise_multiplier == 1.0
