"""The server optimizers (fedavgm, fedadagrad, fedadam, fedyogi) against Flower 1.41's own over several rounds, and
their state: copies, a round trip through a RunDir checkpoint (tensors in safetensors), tampering refused."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flb.adapters.arithmetic import weighted_average
from flb.adapters.lora_aggregation import svd_average
from flb.config import (
    Config,
    FedAdagradSettings,
    FedAdamSettings,
    FedAvgMSettings,
    FedYogiSettings,
    NormBoundingSettings,
    ServerSettings,
)
from flb.errors import RunDirError
from flb.privacy.secret_random import SecretRandom
from flb.run.directory import RunDir
from flb.types import ClientUpdate
from server.strategy.dp_fixed_clipping import DPFixedClipping
from server.strategy.fedadagrad import FedAdagrad
from server.strategy.fedadam import FedAdam
from server.strategy.fedavg import FedAvg
from server.strategy.fedavgm import FedAvgM
from server.strategy.fedyogi import FedYogi
from server.strategy.norm_bounding import NormBounding
from tests.flower_oracle import flower_aggregate, max_difference

SHAPES = {"m.lora_A.weight": (2, 3), "m.lora_B.weight": (3, 2), "bias": (4,)}
NUM_EXAMPLES = [3, 10, 1, 7, 4]
NUM_CLIENTS = len(NUM_EXAMPLES)


def client_states(global_adapter, round_number, count=NUM_CLIENTS):
    generator = torch.Generator().manual_seed(round_number)
    return [
        {
            name: tensor + torch.randn(tensor.shape, generator=generator) * (client + 1) / 4
            for name, tensor in global_adapter.items()
        }
        for client in range(count)
    ]


def updates_of(states, round_number=1):
    return [ClientUpdate(i, round_number, state, NUM_EXAMPLES[i], 0.0, 0.0, 0, "") for i, state in enumerate(states)]


def initial_adapter():
    generator = torch.Generator().manual_seed(123)
    return {name: torch.randn(shape, generator=generator) for name, shape in SHAPES.items()}


def flower_fedadam(**kwargs):
    """Flower's FedAdam multiplies eta by sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1)) in round t; Reddi et al.'s
    Algorithm 2, which we follow, does not: divide it back out so both take the same step."""
    from flwr.serverapp.strategy import FedAdam as Flower

    class Uncorrected(Flower):
        def aggregate_train(self, server_round, replies):
            correction = math.sqrt(1 - kwargs["beta_2"] ** (server_round + 1)) / (
                1 - kwargs["beta_1"] ** (server_round + 1)
            )
            self.eta = kwargs["eta"] / correction
            return super().aggregate_train(server_round, replies)

    return Uncorrected(**kwargs)


def flower_fedopt(name, settings):
    from flwr.serverapp import strategy as flower

    if name == "fedadam":
        return flower_fedadam(**settings)
    if name == "fedadagrad":
        return flower.FedAdagrad(eta=settings["eta"], tau=settings["tau"])
    return flower.FedYogi(**settings)


OURS = {
    "fedadagrad": lambda s: FedAdagrad(FedAdagradSettings(eta=s["eta"], tau=s["tau"])),
    "fedadam": lambda s: FedAdam(FedAdamSettings(**s)),
    "fedyogi": lambda s: FedYogi(FedYogiSettings(**s)),
}


@pytest.mark.parametrize("name", ["fedadagrad", "fedadam", "fedyogi"])
def test_adaptive_server_optimizers_equal_flowers_over_three_rounds(name, flower_task):
    settings = dict(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    ours, flower = OURS[name](settings), flower_fedopt(name, settings)
    global_adapter = initial_adapter()
    for round_number in (1, 2, 3):
        states = client_states(global_adapter, round_number)
        flower.current_arrays = {k: v.numpy() for k, v in global_adapter.items()}  # what configure_train keeps
        expected = flower_aggregate(flower, round_number, states, NUM_EXAMPLES)
        global_adapter = ours.aggregate(global_adapter, updates_of(states, round_number), round_number, len(states))
        assert max_difference(global_adapter, expected) <= 1e-6
    assert max_difference(ours.moments["v"], flower.v_t) <= 1e-6  # the moments matter from round 2 on


@pytest.mark.parametrize("momentum, learning_rate", [(0.9, 1.0), (0.5, 0.7)])
def test_fedavgm_equals_flowers_over_three_rounds(momentum, learning_rate, flower_task):
    from flwr.app import Array, ArrayRecord
    from flwr.serverapp.strategy import FedAvgM as Flower

    ours = FedAvgM(FedAvgMSettings(server_learning_rate=learning_rate, server_momentum=momentum))
    flower = Flower(server_learning_rate=learning_rate, server_momentum=momentum)
    global_adapter = initial_adapter()
    for round_number in (1, 2, 3):
        states = client_states(global_adapter, round_number)
        flower.current_arrays = ArrayRecord({k: Array(v.numpy()) for k, v in global_adapter.items()})
        expected = flower_aggregate(flower, round_number, states, NUM_EXAMPLES)
        global_adapter = ours.aggregate(global_adapter, updates_of(states, round_number), round_number, len(states))
        assert max_difference(global_adapter, expected) <= 1e-6


@pytest.mark.parametrize("mean", [weighted_average, svd_average])
def test_fedavgm_without_momentum_at_rate_one_is_fedavg_with_the_same_lora_mean(mean):
    global_adapter = initial_adapter()
    updates = updates_of(client_states(global_adapter, 1))
    plain = FedAvg(mean=mean).aggregate(global_adapter, updates, 1, 5)
    without_momentum = FedAvgMSettings(server_learning_rate=1.0, server_momentum=0.0)
    stepped = FedAvgM(without_momentum, mean=mean).aggregate(global_adapter, updates, 1, 5)
    assert max_difference(stepped, plain) <= 1e-6


def fedadam():
    return FedAdam(FedAdamSettings(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3))


def two_rounds(strategy):
    global_adapter = initial_adapter()
    for round_number in (1, 2):
        global_adapter = strategy.aggregate(
            global_adapter, updates_of(client_states(global_adapter, round_number)), round_number, 5
        )
    return global_adapter


def test_state_dict_is_a_copy_that_replays_a_round():
    """Leave-one-out scoring loads the state from before a round and aggregates again: that must start from the
    same moments, however often the strategy aggregated since."""
    strategy = fedadam()
    global_adapter = two_rounds(strategy)
    before = strategy.state_dict()
    saved = json.dumps({k: {n: t.tolist() for n, t in v.items()} for k, v in before["moments"].items()})
    updates = updates_of(client_states(global_adapter, 3))
    first = strategy.aggregate(global_adapter, updates, 3, 5)
    assert json.dumps({k: {n: t.tolist() for n, t in v.items()} for k, v in before["moments"].items()}) == saved
    strategy.load_state_dict(before)
    again = strategy.aggregate(global_adapter, updates, 3, 5)
    assert all(torch.equal(first[name], again[name]) for name in first)


def checkpoint(tmp_path, strategy_state):
    run = RunDir.create(tmp_path / "runs", Config().to_dict())
    adapter = initial_adapter()
    run.round_dir(2).mkdir()
    from safetensors.torch import save_file

    save_file(adapter, str(run.round_dir(2) / "adapter_model.safetensors"))
    run.write_checkpoint(2, adapter, strategy_state, {"0": {"num_examples": 3}})
    return run


def bounded(name: str):
    settings = dict(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    return NormBounding(OURS[name](settings), NormBoundingSettings(max_norm=100.0))


@pytest.mark.parametrize("name", sorted(OURS))
def test_moments_survive_a_checkpoint_exactly(tmp_path, name):
    """The wrapper nests its inner strategy's moments; they go to safetensors and come back bit for bit. (Every
    adaptive optimizer here; tests/test_e2e_strategies.py resumes whole runs of fedadam and a wrapper of it.)"""
    strategy = bounded(name)
    global_adapter = two_rounds(strategy)
    run = checkpoint(tmp_path, strategy.state_dict())
    stored = json.loads((run.path / "checkpoint.json").read_text())
    assert stored["strategy"]["inner"]["moments"]["v"]["bias"] == {"$tensor": '["inner", "moments", "v", "bias"]'}
    assert stored["strategy_tensors"]["file"] == "checkpoint_2.safetensors"
    resumed = bounded(name)
    resumed.load_state_dict(run.read_checkpoint()["strategy"])
    updates = updates_of(client_states(global_adapter, 3))
    expected = strategy.aggregate(global_adapter, updates, 3, 5)
    actual = resumed.aggregate(global_adapter, updates, 3, 5)
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_a_later_checkpoint_replaces_the_tensor_file(tmp_path):
    strategy = fedadam()
    two_rounds(strategy)
    run = checkpoint(tmp_path, strategy.state_dict())
    run.round_dir(3).mkdir()
    (run.round_dir(3) / "adapter_model.safetensors").write_bytes(
        (run.round_dir(2) / "adapter_model.safetensors").read_bytes()
    )
    run.write_checkpoint(3, initial_adapter(), strategy.state_dict(), {})
    assert sorted(p.name for p in run.path.glob("checkpoint*")) == ["checkpoint.json", "checkpoint_3.safetensors"]
    run.write_checkpoint(3, initial_adapter(), {"clip_norm": 1.0}, {})
    assert sorted(p.name for p in run.path.glob("checkpoint*")) == ["checkpoint.json"]


@pytest.mark.parametrize("damage", ["tamper", "remove"])
def test_a_tampered_or_missing_tensor_file_is_refused(tmp_path, damage):
    from safetensors.torch import load_file, save_file

    strategy = fedadam()
    two_rounds(strategy)
    run = checkpoint(tmp_path, strategy.state_dict())
    tensor_file = run.path / "checkpoint_2.safetensors"
    if damage == "remove":
        tensor_file.unlink()
    else:
        tensors = load_file(str(tensor_file))
        tensors['["moments", "v", "bias"]'][0] += 1.0
        save_file(tensors, str(tensor_file))
    with pytest.raises(RunDirError) as info:
        run.read_checkpoint()
    assert "\n" not in str(info.value) and "checkpoint_2.safetensors" in str(info.value)
    assert "does not match the digest in checkpoint.json" in str(info.value)


def test_a_checkpoint_of_plain_json_still_loads(tmp_path):
    """A DP run checkpointed before wrappers nested their inner state resumes as before."""
    state = {"accountant": {"history": [[1.0, 0.5, 2]]}, "participations": {"0": 2}}
    run = checkpoint(tmp_path, state)
    assert run.read_checkpoint()["strategy"] == state
    assert not list(run.path.glob("*.safetensors"))
    strategy = DPFixedClipping(FedAvg(), ServerSettings(noise_multiplier=1.0), sample_rate=0.5, random=SecretRandom())
    strategy.load_state_dict(state)
    assert strategy.state_dict() == {**state, "inner": {}}
