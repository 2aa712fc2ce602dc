"""Privacy accounting: opacus' RDP accountant, its JSON state, noise for a target epsilon, warnings."""

from __future__ import annotations

import json
import logging

import pytest

from flb.privacy.accounting import (
    accountant_state,
    epsilon,
    noise_multiplier_for,
    rdp_accountant,
    run_privacy,
    spent,
    warn_if_delta_too_large,
    warn_if_weak,
)


@pytest.mark.parametrize("z, q, steps", [(1.0, 1.0, 3), (0.8, 0.01, 200), (2.0, 0.3, 10)])
def test_epsilon_equals_opacus_rdp_for_the_same_z_q_steps(z, q, steps):
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    ours = rdp_accountant()
    for _ in range(steps):
        ours.step(noise_multiplier=z, sample_rate=q)
    reference, _ = get_privacy_spent(
        orders=RDPAccountant.DEFAULT_ALPHAS,
        delta=1e-5,
        rdp=compute_rdp(q=q, noise_multiplier=z, steps=steps, orders=RDPAccountant.DEFAULT_ALPHAS),
    )
    assert epsilon(ours, 1e-5) == pytest.approx(reference, rel=1e-12)


def test_state_round_trips_through_json_exactly():
    accountant = rdp_accountant()
    for z in (1.0, 1.0, 0.7):
        accountant.step(noise_multiplier=z, sample_rate=0.1)
    restored = rdp_accountant(json.loads(json.dumps(accountant_state(accountant))))
    assert epsilon(restored, 1e-5) == epsilon(accountant, 1e-5)
    restored.step(noise_multiplier=0.7, sample_rate=0.1)
    assert restored.history[-1] == (0.7, 0.1, 2)


def test_no_noise_means_no_bound_and_spent_names_the_inputs():
    accountant = rdp_accountant()
    assert epsilon(accountant, 1e-5) == 0
    accountant.step(noise_multiplier=0.0, sample_rate=1.0)
    assert epsilon(accountant, 1e-5) is None
    report = spent(
        accountant, mechanism="local_update", delta=1e-5, noise_multiplier=0.0, clip_norm=2.0, sample_rate=1.0
    )
    assert report == {
        "mechanism": "local_update",
        "epsilon": None,
        "delta": 1e-5,
        "noise_multiplier": 0.0,
        "clip_norm": 2.0,
        "sample_rate": 1.0,
        "steps": 1,
        "history": [[0.0, 1.0, 1]],
    }


@pytest.mark.parametrize("target, q, steps", [(8.0, 1.0, 2), (2.0, 0.01, 50)])
def test_noise_for_a_target_spends_at_most_the_target(target, q, steps):
    from opacus.accountants.utils import get_noise_multiplier

    z = noise_multiplier_for(target_epsilon=target, delta=1e-5, sample_rate=q, steps=steps)
    accountant = rdp_accountant({"history": [[z, q, steps]]})
    assert target - 0.05 < epsilon(accountant, 1e-5) <= target
    assert z == get_noise_multiplier(target_epsilon=target, target_delta=1e-5, sample_rate=q, steps=steps)


def test_noise_on_top_of_a_history_keeps_the_total_within_the_target():
    history = [[1.5, 1.0, 2]]
    z = noise_multiplier_for(target_epsilon=8.0, delta=1e-5, sample_rate=1.0, steps=3, history=history)
    total = rdp_accountant({"history": history + [[z, 1.0, 3]]})
    assert 7.95 < epsilon(total, 1e-5) <= 8.0


def test_an_unreachable_target_gives_none():
    assert noise_multiplier_for(target_epsilon=1e-9, delta=1e-5, sample_rate=1.0, steps=10) is None
    spent_already = [[0.5, 1.0, 10]]
    assert noise_multiplier_for(target_epsilon=2.0, delta=1e-5, sample_rate=1.0, steps=1, history=spent_already) is None


def test_delta_of_one_over_n_or_more_warns(caplog):
    with caplog.at_level(logging.WARNING):
        warn_if_delta_too_large(1e-5, 1000, "client.dp.delta", "examples")
        assert not caplog.records
        warn_if_delta_too_large(0.01, 100, "client.dp.delta", "examples")
    assert "client.dp.delta = 0.01 is >= 1/100" in caplog.text


def test_the_run_epsilon_is_the_largest_and_unbounded_wins():
    assert run_privacy({}, {}) == {}
    server, client = {"epsilon": 3.0}, {"epsilon": 5.0}
    assert run_privacy(server, {"0": client}) == {"epsilon": 5.0, "server": server, "clients": {"0": client}}
    assert run_privacy(server, {"0": {"epsilon": None}})["epsilon"] is None


def server_dp(*overrides):
    """The server's DP strategy as a run builds it from config.yaml and `overrides`."""
    from flb.config import load_config
    from flb.privacy.secret_random import SecretRandom
    from server.strategy import build_strategy

    return build_strategy(load_config(None, ["strategy.name=dp_fixed_clipping", *overrides]), SecretRandom())


def weak_warnings(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "flb.privacy.accounting" and r.levelno == logging.WARNING
    ]


def test_server_dp_with_the_defaults_is_one_warning_naming_the_z_that_keeps_epsilon_within_10(caplog):
    """config.yaml's server DP (z = 0.5, every client every round) spends 16.5 in its 2 rounds."""
    strategy = server_dp()
    with caplog.at_level(logging.WARNING):
        warn_if_weak("server DP", [strategy], 2)
    assert weak_warnings(caplog) == [
        "server DP: epsilon will be 16.5 after 2 rounds at delta 1e-05 (above 10: a weak guarantee); raise "
        "server.noise_multiplier (now 0.5) to 0.75 or more, or run fewer rounds"
    ]
    caplog.clear()
    warn_if_weak("server DP", [server_dp("server.noise_multiplier=0.75")], 2)
    assert weak_warnings(caplog) == []


def test_the_weakest_client_is_warned_of_once_naming_its_key(caplog):
    from client.privacy import local_privacy
    from flb.config import ClientDPSettings, ClientSettings

    def clients(mode, **dp):
        settings = ClientSettings(local_dp=True, dp=ClientDPSettings(mode=mode, **dp))
        return [
            local_privacy(settings, num_examples=n, batch_size=4, local_steps=5, num_rounds=3, client_id=i)
            for i, n in enumerate((400, 40))
        ]  # under dpsgd client 1's batches sample 10x more of its shard

    fixed = clients("dpsgd", noise_multiplier=0.5)
    with caplog.at_level(logging.WARNING):
        warn_if_weak("client DP", clients("update", target_epsilon=16.0, noise_multiplier=None), 3)
        warn_if_weak("client DP", fixed, 3)
        warn_if_weak("client DP", clients("update", target_epsilon=10.0, noise_multiplier=None), 3)
    first, second = weak_warnings(caplog)
    assert first.startswith("client DP: epsilon will be 16 after 3 rounds") and first.endswith(
        "lower client.dp.target_epsilon (now 16) to 10 or less"
    )
    other, weakest = fixed
    assert other.epsilon_after(3) < 10 < weakest.epsilon_after(3)
    assert second.startswith(f"client DP: epsilon will be {weakest.epsilon_after(3):.3g} after 3 rounds")
    assert "raise client.dp.noise_multiplier (now 0.5) to " in second


def test_no_noise_is_an_unbounded_epsilon_warned_of(caplog):
    with caplog.at_level(logging.WARNING):
        warn_if_weak("server DP", [server_dp("server.noise_multiplier=0")], 2)
    [warning] = weak_warnings(caplog)
    assert warning.startswith("server DP: epsilon will be unbounded (z = 0) after 2 rounds")
