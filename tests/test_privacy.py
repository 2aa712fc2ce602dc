"""Local DP on the update (client/privacy.py): really clipped, noise of the stated std, composed epsilon that
opacus reproduces from the reported history, and extension of a run within (or refused past) its target."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from client.privacy import GaussianUpdate, NoPrivacy, local_privacy
from flb.adapters.arithmetic import l2_norm, subtract
from flb.config import ClientDPSettings, ClientSettings
from flb.errors import ConfigError
from flb.privacy.accounting import NoisePlan, epsilon, rdp_accountant
from flb.privacy.secret_random import SecretRandom

GLOBAL = {"a.lora_A.weight": torch.ones(2, 3), "a.lora_B.weight": torch.zeros(3, 2)}


def gaussian(clip_norm=1.0, noise_multiplier=0.0, adjacency="add_remove"):
    plan = NoisePlan(noise_multiplier=noise_multiplier, target_epsilon=None, num_rounds=3, steps_per_round=1)
    return GaussianUpdate(clip_norm=clip_norm, delta=1e-5, plan=plan, adjacency=adjacency)


def trained(scale):
    return {name: tensor + scale for name, tensor in GLOBAL.items()}


def test_the_sent_update_is_the_clipped_one_under_the_global_names():
    sent = gaussian(clip_norm=0.5).privatize(trained(10.0), GLOBAL, SecretRandom())
    assert sorted(sent) == sorted(GLOBAL)
    assert l2_norm(subtract(sent, GLOBAL)) == pytest.approx(0.5, rel=1e-5)
    small = trained(0.01)
    assert all(
        torch.allclose(sent_t, small[n])
        for n, sent_t in gaussian(clip_norm=0.5).privatize(small, GLOBAL, SecretRandom()).items()
    )


def test_noise_std_is_z_times_c():
    reference = {"w": torch.zeros(200_000)}
    sent = gaussian(clip_norm=0.5, noise_multiplier=2.0).privatize(dict(reference), reference, SecretRandom())
    assert sent["w"].std().item() == pytest.approx(1.0, rel=0.01)
    assert sent["w"].mean().item() == pytest.approx(0.0, abs=0.01)


def test_epsilon_composes_and_the_reported_history_reproduces_it():
    from opacus.accountants import RDPAccountant

    privacy = gaussian(noise_multiplier=1.5)
    spent = []
    for _ in (1, 2, 3):
        privacy.privatize(trained(1.0), GLOBAL, SecretRandom())
        spent.append(privacy.privacy_spent())
    assert spent[0]["epsilon"] < spent[1]["epsilon"] < spent[2]["epsilon"]
    reference = RDPAccountant()
    reference.history = [tuple(entry) for entry in spent[2]["history"]]
    assert reference.get_epsilon(delta=1e-5) == spent[2]["epsilon"]
    assert spent[2]["history"] == [[1.5, 1.0, 3]] and spent[2]["sensitivity"] == 1.0


def test_replace_adjacency_doubles_the_sensitivity():
    add_remove, replace = gaussian(noise_multiplier=2.0), gaussian(noise_multiplier=2.0, adjacency="replace")
    for privacy in (add_remove, replace):
        privacy.privatize(trained(1.0), GLOBAL, SecretRandom())
    assert replace.privacy_spent()["history"] == [[1.0, 1.0, 1]]  # z / 2: the Gaussian with sensitivity 2C
    assert replace.privacy_spent()["epsilon"] > add_remove.privacy_spent()["epsilon"]
    assert replace.privacy_spent()["sensitivity"] == 2.0 and replace.privacy_spent()["adjacency"] == "replace"


def settings(**dp):
    return ClientSettings(local_dp=True, dp=ClientDPSettings(**dp))


def build(client_settings, num_examples=1000, num_rounds=3):
    return local_privacy(
        client_settings, num_examples=num_examples, batch_size=4, local_steps=2, num_rounds=num_rounds, client_id=0
    )


def test_a_target_epsilon_is_met_over_the_planned_rounds():
    privacy = build(settings(mode="update", target_epsilon=8.0, noise_multiplier=None, delta=1e-5), num_rounds=3)
    for _ in (1, 2, 3):
        privacy.privatize(trained(1.0), GLOBAL, SecretRandom())
    assert 7.9 < privacy.privacy_spent()["epsilon"] <= 8.0
    assert privacy.privacy_spent()["target_epsilon"] == 8.0 and privacy.privacy_spent()["planned_rounds"] == 3


def run_rounds(privacy, count):
    for _ in range(count):
        privacy.privatize(trained(1.0), GLOBAL, SecretRandom())


def test_extending_a_run_replans_the_noise_so_the_total_stays_within_the_target():
    from opacus.accountants import RDPAccountant

    dp = dict(mode="update", target_epsilon=8.0, noise_multiplier=None, delta=1e-5)
    first = build(settings(**dp), num_rounds=2)
    run_rounds(first, 2)
    extended = build(settings(**dp), num_rounds=5)
    extended.restore(json.loads(json.dumps(first.state_dict())), rounds_done=2)
    assert extended.noise_multiplier > first.noise_multiplier
    run_rounds(extended, 3)
    report = extended.privacy_spent()
    assert 7.8 < report["epsilon"] <= 8.0
    assert [entry[0] for entry in report["history"]] == [first.noise_multiplier, extended.noise_multiplier]
    reference = RDPAccountant()
    reference.history = [tuple(entry) for entry in report["history"]]
    assert reference.get_epsilon(delta=1e-5) == report["epsilon"]


def test_an_extension_past_the_target_is_refused_unless_allowed(caplog):
    """When what was spent already reaches the target, no noise can keep more rounds within it."""
    spent = build(settings(mode="update", target_epsilon=8.0, noise_multiplier=None, delta=1e-5), num_rounds=1)
    run_rounds(spent, 1)
    state = json.loads(json.dumps(spent.state_dict()))
    lower = dict(mode="update", target_epsilon=4.0, noise_multiplier=None, delta=1e-5)
    with pytest.raises(ConfigError, match="num_rounds: 3 rounds would spend more than client.dp.target_epsilon = 4"):
        build(settings(**lower), num_rounds=3).restore(state, rounds_done=1)
    allowed = build(settings(**lower, allow_over_target=True), num_rounds=3)
    with caplog.at_level(logging.WARNING):
        allowed.restore(state, rounds_done=1)
    assert allowed.noise_multiplier == spent.noise_multiplier and "--allow-over-budget" in caplog.text
    run_rounds(allowed, 2)
    assert allowed.privacy_spent()["epsilon"] > 8.0 and allowed.privacy_spent()["over_target_allowed"] is True


def spent_first_run(num_rounds=2):
    """The JSON state of a client whose run planned z for `num_rounds` rounds of target 8 and ran them all."""
    first = build(settings(mode="update", target_epsilon=8.0, noise_multiplier=None, delta=1e-5), num_rounds=num_rounds)
    run_rounds(first, num_rounds)
    return first.noise_multiplier, json.loads(json.dumps(first.state_dict()))


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_an_extension_that_multiplies_z_is_one_warning_with_the_new_z_and_the_cost_of_keeping_it(caplog):
    z, state = spent_first_run()
    extended = build(settings(mode="update", target_epsilon=8.0, noise_multiplier=None, delta=1e-5), num_rounds=5)
    with caplog.at_level(logging.INFO):
        extended.restore(state, rounds_done=2)
        extended.restore(state, rounds_done=2)  # the client restores the same state again before its round
    kept_z = epsilon(rdp_accountant({"history": state["accountant"]["history"] + [[z, 1.0, 3]]}), 1e-5)
    [warning] = warnings_of(caplog)
    assert extended.noise_multiplier > 2 * z
    assert warning == (
        f"client 0: extended to 5 rounds: z rises from {z:.4g} to {extended.noise_multiplier:.4g} "
        f"({extended.noise_multiplier / z:.3g}x the noise) to keep epsilon within "
        f"client.dp.target_epsilon = 8; expect the model to learn little more; --allow-over-budget "
        f"keeps z = {z:.4g} instead (epsilon would be {kept_z:.3g})"
    )


def test_a_small_replan_is_no_warning(caplog):
    """Planned for 2 rounds at target 8 but stopped after 1: extending to 3 leaves budget, z grows less than 2x."""
    first = build(settings(mode="update", target_epsilon=8.0, noise_multiplier=None, delta=1e-5), num_rounds=2)
    run_rounds(first, 1)
    extended = build(settings(mode="update", target_epsilon=8.0, noise_multiplier=None, delta=1e-5), num_rounds=3)
    with caplog.at_level(logging.INFO):
        extended.restore(json.loads(json.dumps(first.state_dict())), rounds_done=1)
    assert first.noise_multiplier < extended.noise_multiplier < 2 * first.noise_multiplier
    assert warnings_of(caplog) == [] and "noise multiplier z = " in caplog.text


def test_allow_over_budget_keeps_the_runs_z_and_says_the_epsilon_it_will_reach(caplog):
    z, state = spent_first_run()
    allowed = build(
        settings(mode="update", target_epsilon=8.0, noise_multiplier=None, delta=1e-5, allow_over_target=True),
        num_rounds=5,
    )
    with caplog.at_level(logging.WARNING):
        allowed.restore(state, rounds_done=2)
        allowed.restore(state, rounds_done=2)
    assert allowed.noise_multiplier == z
    reached = allowed.epsilon_after(3)
    assert warnings_of(caplog) == [
        f"client 0: extended to 5 rounds as --allow-over-budget asks: z stays {z:.4g}; "
        f"epsilon will be {reached:.3g} (client.dp.target_epsilon = 8)"
    ]
    run_rounds(allowed, 3)
    report = allowed.privacy_spent()
    assert report["epsilon"] == pytest.approx(reached) and report["epsilon"] > 8.0
    assert report["over_target_allowed"] is True and [h[0] for h in report["history"]] == [z]


def test_an_unreachable_target_is_a_config_error():
    with pytest.raises(ConfigError, match="client.dp.target_epsilon: invalid value 1e-09"):
        build(settings(mode="update", target_epsilon=1e-9, noise_multiplier=None))


def test_the_hook_follows_the_config(caplog):
    assert isinstance(
        local_privacy(ClientSettings(), num_examples=10, batch_size=4, local_steps=2, num_rounds=2, client_id=0),
        NoPrivacy,
    )
    assert isinstance(build(settings(mode="update", noise_multiplier=1.0)), GaussianUpdate)
    assert NoPrivacy().privacy_spent() == {} and NoPrivacy().state_dict() == {}
    with caplog.at_level(logging.WARNING):
        build(settings(mode="update", noise_multiplier=1.0, delta=0.05), num_examples=50)
    assert "client.dp.delta = 0.05 is >= 1/50" in caplog.text
    with pytest.raises(ConfigError, match="client.dp.adjacency"):
        settings(mode="dpsgd", adjacency="replace")


def test_under_ffa_lora_a_is_sent_as_the_global_one_and_only_b_is_clipped_and_noised():
    def frozen(noise_multiplier):
        plan = NoisePlan(noise_multiplier=noise_multiplier, target_epsilon=None, num_rounds=3, steps_per_round=1)
        return GaussianUpdate(clip_norm=0.5, delta=1e-5, plan=plan, lora_a_frozen=True)

    clipped = frozen(0.0).privatize(trained(10.0), GLOBAL, SecretRandom())
    assert torch.equal(clipped["a.lora_A.weight"], GLOBAL["a.lora_A.weight"])
    assert l2_norm(subtract(clipped, GLOBAL)) == pytest.approx(0.5, rel=1e-5)  # all of C goes to B
    noised = frozen(1.0).privatize(trained(10.0), GLOBAL, SecretRandom())
    assert torch.equal(noised["a.lora_A.weight"], GLOBAL["a.lora_A.weight"])
    assert not torch.equal(noised["a.lora_B.weight"], clipped["a.lora_B.weight"])
