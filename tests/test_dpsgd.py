"""DP-SGD on the tiny model (client/dpsgd.py): it trains, epsilon grows, the shared model stays clean."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

import assembly
from client.dpsgd import DPSGD
from client.privacy import NoPrivacy
from client.sft import SFTClient
from flb.config import load_config
from flb.local_objective import LocalObjective
from flb.model.load import adapter_parameters, get_adapter_state, set_adapter_state
from flb.privacy.accounting import NoisePlan, epsilon, rdp_accountant


@pytest.fixture(scope="module")
def shared(tiny_model_dir, tmp_path_factory):
    config = load_config(
        None,
        [
            f"model.model_path={tiny_model_dir}",
            "num_clients=2",
            "clients_per_round=2",
            "sft.max_length=96",
            "sft.learning_rate=0.01",
            "model.lora.dropout=0.0",
            "local_steps=2",
            "eval.size=8",
        ],
    )
    shards, _ = assembly.build_data(config)
    tokenizer, model = assembly.build_model(config)
    return config, [shard[:40] for shard in shards], tokenizer, model, tmp_path_factory.mktemp("work")


def client(shared, client_id, privacy, private_dir=None):
    config, shards, tokenizer, model, work = shared
    private_dir = private_dir or Path(tempfile.mkdtemp(dir=work))
    return SFTClient(
        client_id=client_id,
        records=shards[client_id],
        model=model,
        tokenizer=tokenizer,
        settings=config.sft,
        local_steps=config.local_steps,
        num_rounds=config.num_rounds,
        seed=config.seed,
        work_dir=work,
        private_dir=private_dir,
        privacy=privacy,
    )


def dpsgd(sample_rate=0.1, noise_multiplier=1.0):
    plan = NoisePlan(noise_multiplier=noise_multiplier, target_epsilon=None, num_rounds=3, steps_per_round=2)
    return DPSGD(clip_norm=1.0, delta=1e-5, sample_rate=sample_rate, local_steps=2, plan=plan)


def test_a_dpsgd_client_trains_and_its_epsilon_grows(shared):
    model = shared[3]
    dp_client = client(shared, 0, dpsgd())
    start = get_adapter_state(model)
    first = dp_client.fit(start, round=1)
    second = dp_client.fit(first.tensors, round=2)
    assert first.train_loss is None  # an un-noised statistic of the client's data stays with the client
    assert any(not torch.equal(first.tensors[n], start[n]) for n in start if "lora_B" in n)
    assert 0 < first.privacy["epsilon"] < second.privacy["epsilon"]
    assert second.privacy["steps"] == 4 and second.privacy["mechanism"] == "local_dpsgd"
    assert second.privacy["epsilon"] == epsilon(rdp_accountant({"history": [[1.0, 0.1, 4]]}), 1e-5)


def test_the_shared_model_is_unwrapped_after_a_dpsgd_fit(shared):
    model = shared[3]
    plain = client(shared, 1, NoPrivacy())
    start = get_adapter_state(model)
    before = plain.fit(start, round=1).digest
    client(shared, 0, dpsgd()).fit(start, round=1)
    assert not hasattr(model, "autograd_grad_sample_hooks")
    assert not [n for n, p in model.named_parameters() if hasattr(p, "grad_sample") or hasattr(p, "summed_grad")]
    assert all(not module._forward_hooks and not module._backward_hooks for module in model.modules())
    assert plain.fit(start, round=1).digest == before  # another client trains exactly as if DP-SGD never ran


def test_empty_poisson_batches_still_take_a_counted_noise_only_step(shared):
    model = shared[3]
    dp_client = client(shared, 0, dpsgd(sample_rate=1e-9))
    start = get_adapter_state(model)
    update = dp_client.fit(start, round=1)
    assert update.privacy["steps"] == 2
    assert any(not torch.equal(update.tensors[n], start[n]) for n in start)  # the noise of two empty batches


def test_batches_and_noise_come_from_the_clients_secret_state_alone(shared, tmp_path):
    """Same config and seed, fresh secrets: another update. The same secret state: the same update, so a round
    run again after a crash releases nothing new."""
    model = shared[3]
    start = get_adapter_state(model)
    first = client(shared, 0, dpsgd(), tmp_path / "a").fit(start, round=1).digest
    assert client(shared, 0, dpsgd(), tmp_path / "b").fit(start, round=1).digest != first
    assert client(shared, 0, dpsgd(), tmp_path / "a").fit(start, round=1).digest == first


def test_fedprox_term_joins_each_noised_step_after_clipping(shared):
    """With every example's gradient clipped to ~0 and no noise, only FedProx's term can move the adapter, and it
    does, towards the global adapter at every step: it is added after opacus' clipping and noise, not through the
    loss (where clipping would remove it)."""
    model = shared[3]
    start = get_adapter_state(model)
    towards = {name: tensor + 1.0 for name, tensor in start.items()}
    plan = NoisePlan(noise_multiplier=0.0, target_epsilon=None, num_rounds=3, steps_per_round=2)
    dp_client = client(shared, 0, DPSGD(clip_norm=1e-12, delta=1e-5, sample_rate=0.1, local_steps=2, plan=plan))
    set_adapter_state(model, start)
    correction = LocalObjective(proximal_mu=1.0).correction(adapter_parameters(model), towards, {}, {})
    dp_client.privacy.train(model, dp_client.trainer, dp_client.random, correction)
    moved = get_adapter_state(model)
    assert correction.steps == 2 and all((moved[name] > start[name]).all() for name in start)
