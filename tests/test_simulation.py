"""Simulated stragglers and dropouts (flb.simulation): who is slow and by how much, who drops out of which round, and
that a dropout is an unreachable client to the round, not a failure."""

from __future__ import annotations

import pytest

from flb.config import SimulationSettings, load_config
from flb.errors import ClientUnavailable, ConfigError
from flb.simulation import drops_out, slowdown, wait_out, with_dropouts
from flb.types import ProxyClient


def test_the_listed_factors_are_cycled_over_the_clients():
    settings = SimulationSettings(client_speed=[1.0, 5.0, 2.5])
    assert [slowdown(settings, i) for i in range(5)] == [1.0, 5.0, 2.5, 1.0, 5.0]
    assert slowdown(SimulationSettings(), 7) == 1.0


def test_a_spread_draws_each_clients_factor_once_from_the_seed_and_never_below_1():
    spread = SimulationSettings(client_speed=[2.0], speed_spread=0.5, seed=3)
    factors = [slowdown(spread, i) for i in range(200)]
    assert factors == [slowdown(spread, i) for i in range(200)]  # the same draw every time it is asked
    assert factors != [
        slowdown(SimulationSettings(client_speed=[2.0], speed_spread=0.5, seed=4), i) for i in range(200)
    ]
    assert min(factors) >= 1.0 and len(set(factors)) > 150
    assert 1.6 < sorted(factors)[100] < 2.5  # the median stays near the listed factor


def test_a_slow_client_waits_its_factor_less_one_times_its_training(monkeypatch):
    waited = []
    monkeypatch.setattr("flb.simulation.time.sleep", waited.append)
    wait_out(4.0, 1.5)
    wait_out(1.0, 1.5)
    assert waited == [4.5]


def test_dropouts_are_drawn_per_round_and_client_at_the_configured_rate():
    settings = SimulationSettings(dropout=0.3, seed=1)
    draws = [drops_out(settings, round, client) for round in range(1, 101) for client in range(20)]
    assert 0.25 < sum(draws) / len(draws) < 0.35
    assert draws == [drops_out(settings, round, client) for round in range(1, 101) for client in range(20)]
    assert not any(drops_out(SimulationSettings(), round, 0) for round in range(100))


def test_a_client_that_drops_out_is_unavailable_and_the_others_train_in_order():
    settings = SimulationSettings(dropout=0.5, seed=2)
    clients = [ProxyClient(i, 5, None, host=None) for i in range(8)]
    round = 3
    absent = {c.client_id for c in clients if drops_out(settings, round, c.client_id)}
    assert 0 < len(absent) < len(clients)  # this seed has both in round 3
    asked = []

    def fit_all(present, global_adapter, round, extras, deadline):
        asked.extend(c.client_id for c in present)
        return [f"update of {c.client_id}" for c in present]

    results = with_dropouts(fit_all, settings)(clients, {}, round, {})
    assert asked == [i for i in range(8) if i not in absent]
    for client, result in zip(clients, results):
        if client.client_id in absent:
            assert isinstance(result, ClientUnavailable)
            assert str(result) == f"client {client.client_id}: dropped out of round 3 (simulation.dropout = 0.5)"
        else:
            assert result == f"update of {client.client_id}"
    assert with_dropouts(fit_all, SimulationSettings()) is fit_all


def test_the_run_config_gives_each_client_its_slowdown(tiny_model_dir, tmp_path):
    import assembly

    config = load_config(
        None,
        [
            f"model.model_path={tiny_model_dir}",
            "num_clients=2",
            "clients_per_round=2",
            "simulation.client_speed=[1, 4]",
        ],
    )
    tokenizer, model = assembly.build_model(config)
    shard = [{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}]
    built = [
        assembly.build_client(
            config, i, shard, model, tokenizer, work_dir=tmp_path / "work", private_dir=tmp_path / f"client_{i}"
        )
        for i in range(2)
    ]
    assert [client.slowdown for client in built] == [1.0, 4.0]


@pytest.mark.parametrize(
    "override, message",
    [
        ("execution.mode=batched", "execution.mode: invalid value 'batched'; allowed: sequential or processes"),
        ("mode=split", "mode: invalid value 'split'; allowed: federated with simulation.*"),
    ],
)
def test_modes_that_cannot_simulate_a_slow_client_refuse_in_one_line(override, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        load_config(None, ["simulation.dropout=0.1", override])
