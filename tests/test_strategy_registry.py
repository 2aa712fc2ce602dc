"""flb.config.STRATEGIES, the one list of strategies: the builders, the config's names and sections, and every
capability the code asks about agree with it, the capabilities checked on what the built strategies do."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

import pytest
import torch
import yaml

import server.strategy
from flb.config import DEFAULT_CONFIG_PATH, STRATEGIES, StrategySettings, load_config, strategy_names
from flb.errors import ConfigError
from flb.local_objective import LocalObjective
from flb.privacy.secret_random import SecretRandom
from flb.types import ClientUpdate
from server.replay import SERVER_NOISE, not_replayable
from server.strategy import build_strategy

GLOBAL = {"w": torch.tensor([0.5, -1.0, 2.0])}
STATES = [torch.tensor([1.0, 0.0, 3.0]), torch.tensor([4.0, -2.0, 1.0]), torch.tensor([-1.0, 5.0, 2.5])]
WEIGHTS = [1, 5, 2]
# every registered name loads with these: Krum's family needs 2f + 3 <= server.min_clients updates
LOADS = [
    "server.min_clients=3",
    "strategy.fedbuff.buffer_size=3",
    "strategy.norm_bounding.max_norm=1e6",
    "server.clip_threshold=1e6",
    "server.noise_multiplier=0",
]


def updates(weights=WEIGHTS):
    return [
        ClientUpdate(i, 1, {"w": state}, count, None, 0.0, 0, "", extras={"w": torch.zeros(3)}, base=GLOBAL)
        for i, (state, count) in enumerate(zip(STATES, weights))
    ]


def built(name, *overrides, random=None):
    return build_strategy(load_config(None, [*LOADS, f"strategy.name={name}", *overrides]), random or SecretRandom())


def weighted_mean(weights=WEIGHTS):
    return sum(state * count for state, count in zip(STATES, weights)) / sum(weights)


def test_the_builders_are_the_registry():
    """A module of server/strategy with a `build` is a registered strategy, and every registered one has its module."""
    modules = [
        importlib.import_module(f"server.strategy.{module.name}")
        for module in pkgutil.iter_modules(server.strategy.__path__)
    ]
    assert {module.__name__.rsplit(".", 1)[1] for module in modules if hasattr(module, "build")} == set(STRATEGIES)
    assert all(callable(server.strategy.builder(name)) for name in STRATEGIES)


def test_the_config_sections_are_the_registrys_settings():
    sections = {
        field.name: field.type for field in dataclasses.fields(StrategySettings) if dataclasses.is_dataclass(field.type)
    }
    assert sections == {name: spec.settings for name, spec in STRATEGIES.items() if spec.settings is not None}
    in_config_yaml = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())["strategy"]
    # and the sections of settings every strategy shares (lora_aggregation hetlora's, personalization's)
    every_section = {
        f.name for f in dataclasses.fields(StrategySettings) if dataclasses.is_dataclass(f.default_factory)
    }
    assert set(sections) < every_section
    assert {key for key, value in in_config_yaml.items() if isinstance(value, dict)} == every_section


def test_the_configs_names_are_the_registrys():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["strategy.name=fedsgd"])
    assert str(info.value) == f"strategy.name: invalid value 'fedsgd'; allowed: {' | '.join(STRATEGIES)}"
    with pytest.raises(ConfigError) as info:
        load_config(None, ["strategy.wraps=fedsgd"])
    unwrapped = [name for name, spec in STRATEGIES.items() if not spec.wraps and not spec.asynchronous]
    assert str(info.value) == f"strategy.wraps: invalid value 'fedsgd'; allowed: {' | '.join(unwrapped)}"
    help_text = {field.name: field.metadata["help"] for field in dataclasses.fields(StrategySettings)}
    assert help_text["name"] == "Aggregation strategy: " + " | ".join(STRATEGIES) + "."
    assert all(load_config(None, [*LOADS, f"strategy.name={name}"]).strategy.name == name for name in STRATEGIES)


def test_strategy_names_selects_by_capability():
    assert strategy_names() == tuple(STRATEGIES)
    assert strategy_names(dp=True) == tuple(name for name, spec in STRATEGIES.items() if spec.dp)
    with pytest.raises(AttributeError):
        strategy_names(robust=True)


@pytest.mark.parametrize("name", strategy_names(wraps=False))
def test_output_is_mean_says_whether_the_output_is_the_weighted_mean(name):
    """Two rounds from the same global adapter (a server optimizer's first step at rate 1 is the mean; its momentum
    shows in the second)."""
    strategy = built(name)
    outputs = [strategy.aggregate(GLOBAL, updates(), round, 3)["w"] for round in (1, 2)]
    assert all(torch.allclose(output, weighted_mean()) for output in outputs) == STRATEGIES[name].output_is_mean


@pytest.mark.parametrize("name", STRATEGIES)
def test_wraps_says_whether_the_updates_are_bounded_first(name):
    """With every bound at 1e-3 and no noise, a wrapper's output stays within 1e-3 of the global adapter."""
    bounds = ["strategy.norm_bounding.max_norm=1e-3", "server.clip_threshold=1e-3"]
    output = built(name, *bounds).aggregate(GLOBAL, updates(), 1, 3)["w"]
    assert bool((output - GLOBAL["w"]).norm() <= 1e-3 + 1e-6) == STRATEGIES[name].wraps
    assert load_config(None, [*LOADS, f"strategy.name={name}", "strategy.wraps=fedprox"]).strategy.aggregator == (
        "fedprox" if STRATEGIES[name].wraps else name
    )


def test_a_wrapper_hands_the_bounded_updates_to_strategy_wraps():
    """Bounds lifted: norm bounding around median is the median; the DP wrappers' mean is unweighted."""
    median = built("norm_bounding", "strategy.wraps=median").aggregate(GLOBAL, updates(), 1, 3)["w"]
    assert torch.equal(median, torch.stack(STATES).median(dim=0).values)
    for name in strategy_names(dp=True):
        output = built(name, "strategy.wraps=fedprox").aggregate(GLOBAL, updates(), 1, 3)["w"]
        assert torch.allclose(output, weighted_mean([1, 1, 1]))


@pytest.mark.parametrize("name", STRATEGIES)
def test_dp_says_whether_the_server_adds_secret_noise_and_accounts_for_it(name):
    noised = [built(name, "server.noise_multiplier=0.5").aggregate(GLOBAL, updates(), 1, 3)["w"] for _ in range(2)]
    dp = STRATEGIES[name].dp
    assert (not torch.equal(*noised)) == dp  # two servers, two secret generators
    strategy = built(name)
    strategy.aggregate(GLOBAL, updates(), 1, 3)
    assert bool(strategy.privacy_spent()) == dp
    config = load_config(None, [*LOADS, f"strategy.name={name}"])
    assert config.server_dp == config.uses_dp == dp
    assert (not_replayable(config.to_dict()) == SERVER_NOISE) == dp
    assert (load_config(None, [*LOADS, f"strategy.name={name}"], use_server_dp=False).strategy.name != name) == dp


@pytest.mark.parametrize("name", strategy_names(wraps=False))
def test_client_objective_says_whether_the_clients_change_their_loss(name):
    strategy = load_config(None, [*LOADS, f"strategy.name={name}"]).strategy
    assert (LocalObjective.of(strategy) != LocalObjective()) == STRATEGIES[name].client_objective
    if STRATEGIES[name].client_objective:
        with pytest.raises(
            ConfigError, match="^strategy.name: invalid value .*; allowed: a strategy without a client-side objective"
        ):
            load_config(None, [*LOADS, f"strategy.name={name}", "mode=split"])
    elif STRATEGIES[name].asynchronous:  # refused in split mode for its own reason
        with pytest.raises(ConfigError, match="^strategy.name: invalid value .*; allowed: a synchronous strategy"):
            load_config(None, [*LOADS, f"strategy.name={name}", "mode=split"])
    else:
        assert load_config(None, [*LOADS, f"strategy.name={name}", "mode=split"]).mode == "split"


@pytest.mark.parametrize("mean", strategy_names(output_is_mean=True))
@pytest.mark.parametrize("wrapper", strategy_names(dp=True))
def test_svd_and_the_dp_wrappers_take_exactly_the_mean_strategies(mean, wrapper):
    assert load_config(None, ["strategy.lora_aggregation=svd", f"strategy.name={mean}"]).strategy.name == mean
    assert load_config(None, [f"strategy.name={wrapper}", f"strategy.wraps={mean}"]).strategy.wraps == mean
    for other in strategy_names(output_is_mean=False, wraps=False):
        with pytest.raises(ConfigError, match="^strategy.wraps: invalid value"):
            load_config(None, [*LOADS, f"strategy.name={wrapper}", f"strategy.wraps={other}"])
