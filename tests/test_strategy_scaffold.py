"""The server's parts of FedProx and SCAFFOLD (server/strategy/fedprox.py, scaffold.py), by hand on tiny tensors."""

from __future__ import annotations

import pytest
import torch

from flb.audit.digests import adapter_digest
from flb.config import ScaffoldSettings, load_config
from flb.errors import ConfigError
from flb.privacy.secret_random import SecretRandom
from flb.types import ClientUpdate
from server.strategy import build_strategy
from server.strategy.fedprox import FedProx
from server.strategy.scaffold import Scaffold

GLOBAL = {"a": torch.tensor([1.0, 2.0])}


def update(client_id: int, tensors: list[float], delta_c: list[float], num_examples: int) -> ClientUpdate:
    state = {"a": torch.tensor(tensors)}
    return ClientUpdate(
        client_id, 1, state, num_examples, None, 0.0, 0, adapter_digest(state), extras={"a": torch.tensor(delta_c)}
    )


UPDATES = [update(0, [2.0, 2.0], [0.3, 0.0], 1), update(1, [0.0, 4.0], [0.1, 0.2], 9)]


def test_scaffold_steps_by_eta_g_times_the_unweighted_mean_change_and_moves_c_by_s_over_n():
    """mean(y_i - x) = ((1, 0) + (-1, 2)) / 2 = (0, 1), eta_g = 0.5: x = (1, 2.5) whatever the example counts;
    c = (0.1, 0.1) + ((0.3, 0) + (0.1, 0.2)) / N=4 = (0.2, 0.15)."""
    strategy = Scaffold(ScaffoldSettings(server_learning_rate=0.5), num_clients=4)
    strategy.load_state_dict({"variate": {"a": torch.tensor([0.1, 0.1])}})
    assert torch.allclose(strategy.aggregate(GLOBAL, UPDATES, 1, 2)["a"], torch.tensor([1.0, 2.5]))
    assert torch.allclose(strategy.client_extras(GLOBAL)["a"], torch.tensor([0.2, 0.15]))


def test_scaffold_starts_from_a_zero_variate_and_its_state_is_a_copy():
    strategy = Scaffold(ScaffoldSettings(server_learning_rate=1.0), num_clients=2)
    assert torch.equal(strategy.client_extras(GLOBAL)["a"], torch.zeros(2)) and strategy.state_dict() == {"variate": {}}
    strategy.aggregate(GLOBAL, UPDATES, 1, 2)
    before = strategy.state_dict()
    first = strategy.aggregate(GLOBAL, UPDATES, 2, 2)
    assert torch.allclose(before["variate"]["a"], torch.tensor([0.2, 0.1]))  # aggregating again did not change it
    strategy.load_state_dict(before)  # as leave-one-out scoring does
    assert torch.equal(strategy.aggregate(GLOBAL, UPDATES, 2, 2)["a"], first["a"])
    assert torch.allclose(strategy.client_extras(GLOBAL)["a"], torch.tensor([0.4, 0.2]))


def test_the_config_refuses_a_server_learning_rate_that_is_not_positive():
    with pytest.raises(
        ConfigError,
        match=r"^strategy.scaffold.server_learning_rate: invalid value 0.0; allowed: a "
        r"number > 0$",
    ):
        load_config(None, ["strategy.name=scaffold", "strategy.scaffold.server_learning_rate=0"])


def test_fedprox_aggregates_as_fedavg_and_both_are_registered():
    assert torch.allclose(FedProx().aggregate(GLOBAL, UPDATES, 1, 2)["a"], torch.tensor([0.2, 3.8]))
    for name, kind in (("fedprox", FedProx), ("scaffold", Scaffold)):
        assert type(build_strategy(load_config(None, [f"strategy.name={name}"]), SecretRandom())) is kind


@pytest.mark.parametrize(
    "overrides",
    [
        ["strategy.name=scaffold", "client.local_dp=true"],
        ["strategy.name=norm_bounding", "strategy.wraps=scaffold", "client.local_dp=true", "client.dp.mode=update"],
    ],
)
def test_scaffold_is_refused_with_differential_privacy(overrides):
    with pytest.raises(
        ConfigError,
        match=r"^strategy\.(name|wraps): invalid value 'scaffold'; allowed: a strategy "
        r"other than scaffold with differential privacy \(SCAFFOLD sends",
    ):
        load_config(None, overrides)
