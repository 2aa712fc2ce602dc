"""Config loading: defaults, overrides, and one-line errors naming key, value and fix."""
from __future__ import annotations

import pytest

from flb.config import Config, load_config, parse_bool
from flb.errors import ConfigError


def test_config_yaml_matches_the_dataclass_defaults():
    assert load_config() == Config()


def test_overrides_parse_as_yaml():
    config = load_config(None, ["model.quantization=4", "model.target_modules=[q_proj,k_proj]", "sft.learning_rate=2e-4",
                                "num_rounds=5"])
    assert config.model.quantization == 4
    assert config.model.target_modules == ["q_proj", "k_proj"]
    assert config.sft.learning_rate == pytest.approx(2e-4)
    assert config.num_rounds == 5


@pytest.mark.parametrize("override, message", [
    ("modle.lora.r=4", "modle: unknown key; did you mean 'model'?"),
    ("model.lora.rank=4", "model.lora.rank: unknown key; valid keys: r, alpha, dropout"),
    ("model.quantization=16", "model.quantization: invalid value 16; allowed: 4 | 8 | null"),
    ("model.device_map=tpu", "model.device_map: invalid value 'tpu'; allowed: cpu | cuda | mps | auto"),
    ("partition.method=random", "partition.method: invalid value 'random'; allowed: iid | dirichlet | column"),
    ("num_rounds=two", "num_rounds: invalid value 'two'; allowed: an integer"),
    ("chain_record=yes please", "chain_record: invalid value 'yes please'; allowed: true | false"),
    ("clients_per_round=9", "clients_per_round: invalid value 9; allowed: an integer in [1, num_clients=3]"),
    ("strategy.name=fedprox", "strategy.name: invalid value 'fedprox'; allowed: fedavg | dp_fixed_clipping | "
                              "dp_adaptive_clipping"),
    ("server.clip_threshold=0", "server.clip_threshold: invalid value 0.0; allowed: a number > 0"),
    ("num_clients", "--set: 'num_clients' is not KEY=VALUE"),
])
def test_bad_values_name_key_value_and_fix(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("override, message", [
    ("client.dp.target_epsilon=0", "client.dp.target_epsilon: invalid value 0.0; allowed: a number > 0"),
    ("client.dp.target_epsilon=-1", "client.dp.target_epsilon: invalid value -1.0; allowed: a number > 0"),
    ("client.dp.delta=1", "client.dp.delta: invalid value 1.0; allowed: a number in (0, 1)"),
    ("client.dp.delta=0", "client.dp.delta: invalid value 0.0; allowed: a number in (0, 1)"),
    ("server.dp.delta=1.5", "server.dp.delta: invalid value 1.5; allowed: a number in (0, 1)"),
    ("client.dp.clip_norm=0", "client.dp.clip_norm: invalid value 0.0; allowed: a number > 0"),
    ("client.dp.noise_multiplier=-0.1", "client.dp.noise_multiplier: invalid value -0.1; allowed: a number >= 0"),
    ("server.noise_multiplier=-1", "server.noise_multiplier: invalid value -1.0; allowed: a number >= 0"),
    ("server.dp.target_quantile=1", "server.dp.target_quantile: invalid value 1.0; allowed: a number in (0, 1)"),
    ("server.dp.target_quantile=0", "server.dp.target_quantile: invalid value 0.0; allowed: a number in (0, 1)"),
    ("client.dp.mode=central", "client.dp.mode: invalid value 'central'; allowed: update | dpsgd"),
])
def test_bad_privacy_values_name_key_value_and_fix(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value).startswith(message)


def test_privacy_settings_that_only_fail_together():
    with pytest.raises(ConfigError, match="client.dp.target_epsilon: invalid value None; allowed: a number > 0 when "
                                          "client.dp.noise_multiplier is null"):
        load_config(None, ["client.dp.target_epsilon=null"])
    with pytest.raises(ConfigError, match=r"server.noise_multiplier: invalid value 0.5; allowed: a number < 2 \* "
                                          r"server.dp.clipped_count_stddev = 0.4"):
        load_config(None, ["strategy.name=dp_adaptive_clipping", "server.dp.clipped_count_stddev=0.2"])
    assert load_config(None, ["strategy.name=dp_adaptive_clipping"]).server.dp.clipped_count_stddev == 1.0


def test_use_server_dp_is_a_real_boolean():
    assert load_config(use_server_dp=True).strategy.name == "dp_fixed_clipping"
    assert load_config(None, ["strategy.name=dp_fixed_clipping"], use_server_dp=False).strategy.name == "fedavg"
    assert parse_bool("--use_server_dp", "false") is False
    with pytest.raises(ConfigError, match="allowed: true | false"):
        parse_bool("--use_server_dp", "maybe")


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_resolved_config_round_trips():
    from flb.config import config_from_dict

    config = load_config(None, ["num_rounds=4"])
    assert config_from_dict(config.to_dict()) == config
