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
    ("strategy.name=fedprox", "strategy.name: invalid value 'fedprox'; allowed: fedavg | dp_fixed_clipping"),
    ("server.clip_threshold=0", "server.clip_threshold: invalid value 0.0; allowed: a number > 0"),
    ("num_clients", "--set: 'num_clients' is not KEY=VALUE"),
])
def test_bad_values_name_key_value_and_fix(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


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
