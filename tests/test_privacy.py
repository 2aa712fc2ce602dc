"""Local DP on the update (client/privacy.py): really clipped, noise of the stated std, composed epsilon."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from client.privacy import GaussianUpdate, NoPrivacy, local_privacy
from flb.accounting import epsilon, rdp_accountant
from flb.adapter_math import l2_norm, subtract
from flb.config import ClientDPSettings, ClientSettings

GLOBAL = {"a.lora_A.weight": torch.ones(2, 3), "a.lora_B.weight": torch.zeros(3, 2)}


def gaussian(clip_norm=1.0, noise_multiplier=0.0, client_id=0):
    return GaussianUpdate(clip_norm=clip_norm, noise_multiplier=noise_multiplier, delta=1e-5, seed=42,
                          client_id=client_id)


def trained(scale):
    return {name: tensor + scale for name, tensor in GLOBAL.items()}


def test_the_sent_update_is_the_clipped_one_under_the_global_names():
    sent = gaussian(clip_norm=0.5).privatize(trained(10.0), GLOBAL, round=1)
    assert sorted(sent) == sorted(GLOBAL)
    assert l2_norm(subtract(sent, GLOBAL)) == pytest.approx(0.5, rel=1e-5)
    small = trained(0.01)
    assert all(torch.allclose(sent_t, small[n]) for n, sent_t in gaussian(clip_norm=0.5).privatize(small, GLOBAL, 1).items())


def test_noise_std_is_z_times_c():
    reference = {"w": torch.zeros(200_000)}
    sent = gaussian(clip_norm=0.5, noise_multiplier=2.0).privatize(dict(reference), reference, round=1)
    assert sent["w"].std().item() == pytest.approx(1.0, rel=0.01)
    assert sent["w"].mean().item() == pytest.approx(0.0, abs=0.01)


def test_noise_is_reproducible_per_round_and_client():
    sent = lambda client_id, round: gaussian(noise_multiplier=1.0, client_id=client_id).privatize(trained(0), GLOBAL, round)
    assert torch.equal(sent(0, 1)["a.lora_B.weight"], sent(0, 1)["a.lora_B.weight"])
    assert not torch.equal(sent(0, 1)["a.lora_B.weight"], sent(1, 1)["a.lora_B.weight"])
    assert not torch.equal(sent(0, 1)["a.lora_B.weight"], sent(0, 2)["a.lora_B.weight"])


def test_epsilon_composes_over_participations_and_survives_a_checkpoint():
    privacy = gaussian(noise_multiplier=1.5)
    spent = []
    for round_number in (1, 2, 3):
        privacy.privatize(trained(1.0), GLOBAL, round_number)
        spent.append(privacy.privacy_spent()["epsilon"])
    assert spent[0] < spent[1] < spent[2]
    assert spent[2] == epsilon(rdp_accountant({"history": [[1.5, 1.0, 3]]}), 1e-5)
    resumed = gaussian(noise_multiplier=1.5)
    resumed.load_state_dict(json.loads(json.dumps(privacy.state_dict())))
    assert resumed.privacy_spent() == privacy.privacy_spent()


def settings(**dp):
    return ClientSettings(local_dp=True, dp=ClientDPSettings(**dp))


def build(client_settings, num_examples=1000, num_rounds=3):
    return local_privacy(client_settings, num_examples=num_examples, batch_size=4, learning_rate=1e-3, local_steps=2,
                         num_rounds=num_rounds, seed=0, client_id=0)


def test_a_target_epsilon_is_met_over_the_planned_rounds():
    privacy = build(settings(mode="update", target_epsilon=8.0, noise_multiplier=None, delta=1e-5), num_rounds=3)
    for round_number in (1, 2, 3):
        privacy.privatize(trained(1.0), GLOBAL, round_number)
    assert 7.9 < privacy.privacy_spent()["epsilon"] <= 8.0


def test_the_hook_follows_the_config(caplog):
    assert isinstance(local_privacy(ClientSettings(), num_examples=10, batch_size=4, learning_rate=1e-3,
                                    local_steps=2, num_rounds=2, seed=0, client_id=0), NoPrivacy)
    assert isinstance(build(settings(mode="update", noise_multiplier=1.0)), GaussianUpdate)
    assert NoPrivacy().privacy_spent() == {} and NoPrivacy().state_dict() == {}
    with caplog.at_level(logging.WARNING):
        build(settings(mode="update", noise_multiplier=1.0, delta=0.05), num_examples=50)
    assert "client.dp.delta = 0.05 is >= 1/50" in caplog.text
