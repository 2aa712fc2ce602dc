"""Config loading: defaults, overrides, and one-line errors naming key, value and fix."""

from __future__ import annotations

import pytest

from flb.config import Config, load_config, parse_bool
from flb.errors import ConfigError


def test_config_yaml_matches_the_dataclass_defaults():
    assert load_config() == Config()


def test_overrides_parse_as_yaml():
    config = load_config(
        None, ["model.quantization=4", "model.target_modules=[q_proj,k_proj]", "sft.learning_rate=2e-4", "num_rounds=5"]
    )
    assert config.model.quantization == 4
    assert config.model.target_modules == ["q_proj", "k_proj"]
    assert load_config(None, ["model.target_modules=all-linear"]).model.target_modules == "all-linear"
    assert config.sft.learning_rate == pytest.approx(2e-4)
    assert config.num_rounds == 5


@pytest.mark.parametrize(
    "override, message",
    [
        ("modle.lora.r=4", "modle: unknown key; did you mean 'model'?"),
        ("model.lora.rank=4", "model.lora.rank: unknown key; valid keys: r, alpha, dropout"),
        ("model.quantization=16", "model.quantization: invalid value 16; allowed: 4 | 8 | null"),
        ("model.device_map=tpu", "model.device_map: invalid value 'tpu'; allowed: cpu | cuda | mps | auto"),
        ("partition.method=random", "partition.method: invalid value 'random'; allowed: iid | dirichlet | column"),
        ("num_rounds=two", "num_rounds: invalid value 'two'; allowed: an integer"),
        ("chain_record=yes please", "chain_record: invalid value 'yes please'; allowed: true | false"),
        ("clients_per_round=9", "clients_per_round: invalid value 9; allowed: an integer in [1, num_clients=3]"),
        (
            "strategy.name=fedsgd",
            "strategy.name: invalid value 'fedsgd'; allowed: fedavg | fedprox | fedavgm | "
            "fedadagrad | fedadam | fedyogi | scaffold | median | trimmed_mean | krum | multi_krum | "
            "bulyan | fedbuff | norm_bounding | dp_fixed_clipping | dp_adaptive_clipping",
        ),
        (
            "strategy.wraps=dp_fixed_clipping",
            "strategy.wraps: invalid value 'dp_fixed_clipping'; allowed: fedavg | fedprox | fedavgm",
        ),
        (
            "strategy.lora_aggregation=mean",
            "strategy.lora_aggregation: invalid value 'mean'; allowed: separate | ffa | svd",
        ),
        ("strategy.fedadam.tau=0", "strategy.fedadam.tau: invalid value 0.0; allowed: a number > 0"),
        ("server.clip_threshold=0", "server.clip_threshold: invalid value 0.0; allowed: a number > 0"),
        ("num_clients", "--set: 'num_clients' is not KEY=VALUE"),
    ],
)
def test_bad_values_name_key_value_and_fix(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "override, message",
    [
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
    ],
)
def test_bad_privacy_values_name_key_value_and_fix(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value).startswith(message)


def test_privacy_settings_that_only_fail_together():
    with pytest.raises(
        ConfigError,
        match="client.dp.target_epsilon: invalid value None; allowed: a number > 0 when "
        "client.dp.noise_multiplier is null",
    ):
        load_config(None, ["client.dp.target_epsilon=null"])
    with pytest.raises(
        ConfigError,
        match=r"server.noise_multiplier: invalid value 0.5; allowed: a number < 2 \* "
        r"server.dp.clipped_count_stddev = 0.4",
    ):
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


@pytest.mark.parametrize(
    "override, message",
    [
        ("seed=-1", "seed: invalid value -1; allowed: an integer in [0, 2**32)"),
        ("seed=4294967296", "seed: invalid value 4294967296; allowed: an integer in [0, 2**32)"),
        (
            "model.lora.alpha=" + "9" * 30,
            "model.lora.alpha: invalid value 999999999999999999999999999999; allowed: an integer that fits in 64 bits",
        ),
        ("sft.learning_rate=" + "1" * 400, "sft.learning_rate: invalid value 1111111111"),
        ("sft.learning_rate=.nan", "sft.learning_rate: invalid value nan; allowed: a finite number"),
        ("partition.alpha=1e7", "partition.alpha: invalid value 10000000.0; allowed: a number in (0, 1e6]"),
        ("output_dir=runs\0x", "output_dir: invalid value 'runs\\x00x'; allowed: a non-empty string without NUL"),
        ("sft.training_arguments={1: 2}", "sft.training_arguments: invalid value 1; allowed: argument names"),
        (
            "sft.training_arguments={warmup_steps: 2001-01-01}",
            "sft.training_arguments.warmup_steps: invalid value datetime.date(2001, 1, 1)",
        ),
        ("sft.training_arguments={x: !!set {a}}", "sft.training_arguments.x: invalid value {'a'}"),
        ("sft.training_arguments={x: &a [*a]}", "sft.training_arguments.x: invalid value [[...]]"),
        ("model..r=4", "--set: 'model..r' has an empty part between dots"),
        ("seed=2001-13-01", "seed: invalid value '2001-13-01'; allowed: an integer"),
        ("model.target_modules=" + "x" * 500, "model.target_modules: invalid value 'xxxx"),
        (
            "model.target_modules=null",
            "model.target_modules: invalid value None; allowed: a string or a list of strings",
        ),
        ("model.target_modules=[]", "model.target_modules: invalid value []; allowed: auto | all-linear | a non-empty"),
        (
            "model.target_modules=all_linear",
            "model.target_modules: invalid value 'all_linear'; allowed: auto | all-linear",
        ),
        ("sft.lr_schedule=cosine", "sft.lr_schedule: invalid value 'cosine'; allowed: constant | cosine_over_rounds"),
        (
            "sft.min_learning_rate=0.1",
            "sft.min_learning_rate: invalid value 0.1; allowed: a number in [0, sft.learning_rate=0.001]",
        ),
        ("eval.suites=[mmlu]", "eval.suites: invalid value 'mmlu'; allowed: exact_match | multiple_choice | humaneval"),
        (
            "eval.suites=[humaneval, humaneval]",
            "eval.suites: invalid value ['humaneval', 'humaneval']; allowed: each suite at most once",
        ),
        ("eval.suites=[multiple_choice]", "eval.multiple_choice.path: invalid value None; allowed: a questions file"),
        ("eval.suites=[lm_eval]", "eval.lm_eval.tasks: invalid value []; allowed: a non-empty list of lm-evaluation"),
        ("eval.humaneval.memory_mb=1", "eval.humaneval.memory_mb: invalid value 1; allowed: an integer >= 64"),
        ("comm.budget_mb=0", "comm.budget_mb: invalid value 0.0; allowed: a number > 0, or null for no budget"),
        (
            "notify.url=ftp://host/x",
            "notify.url: invalid value 'ftp://host/x'; allowed: an http:// or https:// URL, or null",
        ),
        ("notify.timeout_s=0", "notify.timeout_s: invalid value 0.0; allowed: a number of seconds > 0"),
        (
            "execution.mode=threads",
            "execution.mode: invalid value 'threads'; allowed: sequential | batched | processes",
        ),
        (
            "execution.devices=[gpu0]",
            "execution.devices: invalid value ['gpu0']; allowed: a list of cpu | cuda | cuda:N",
        ),
        ("execution.workers=0", "execution.workers: invalid value 0; allowed: an integer >= 1"),
        ("execution.memory_budget_mb=-1", "execution.memory_budget_mb: invalid value -1.0; allowed: a number > 0"),
        ("mode=pipeline", "mode: invalid value 'pipeline'; allowed: federated | split"),
        ("split.trunk=mean", "split.trunk: invalid value 'mean'; allowed: shared | per_client"),
        ("split.head_layers=-1", "split.head_layers: invalid value -1; allowed: an integer >= 0"),
        ("split.channel=tcp", "split.channel: invalid value 'tcp'; allowed: in_process | loopback | grpc"),
        ("split.address=localhost", "split.address: invalid value 'localhost'; allowed: host:port"),
        ("split.activation_noise=-1", "split.activation_noise: invalid value -1.0; allowed: a number >= 0"),
        ("comm.compression=zstd", "comm.compression: invalid value 'zstd'; allowed: none | bf16 | int8 | nf4 | topk"),
        ("comm.broadcast_compression=topk", "comm.broadcast_compression: invalid value 'topk'; allowed: none | bf16"),
        ("comm.topk_fraction=0", "comm.topk_fraction: invalid value 0.0; allowed: a number in (0, 1]"),
        ("comm.topk_fraction=1.5", "comm.topk_fraction: invalid value 1.5; allowed: a number in (0, 1]"),
    ],
)
def test_absurd_values_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "strategy.fedavgm.server_learning_rate=0",
            "strategy.fedavgm.server_learning_rate: invalid value 0.0; allowed: a number > 0",
        ),
        (
            "strategy.fedavgm.server_momentum=1",
            "strategy.fedavgm.server_momentum: invalid value 1.0; allowed: a number in [0, 1)",
        ),
        ("strategy.fedadagrad.eta=0", "strategy.fedadagrad.eta: invalid value 0.0; allowed: a number > 0"),
        ("strategy.fedadagrad.tau=0", "strategy.fedadagrad.tau: invalid value 0.0; allowed: a number > 0"),
        ("strategy.fedadam.beta_2=1", "strategy.fedadam.beta_2: invalid value 1.0; allowed: a number in [0, 1)"),
        ("strategy.fedyogi.beta_1=-0.1", "strategy.fedyogi.beta_1: invalid value -0.1; allowed: a number in [0, 1)"),
        (
            "strategy.scaffold.server_learning_rate=0",
            "strategy.scaffold.server_learning_rate: invalid value 0.0; allowed: a number > 0",
        ),
        (
            "strategy.trimmed_mean.beta=0.5",
            "strategy.trimmed_mean.beta: invalid value 0.5; allowed: a number in [0, 0.5)",
        ),
        ("strategy.krum.num_malicious=-1", "strategy.krum.num_malicious: invalid value -1; allowed: an integer >= 0"),
        (
            "strategy.multi_krum.num_selected=0",
            "strategy.multi_krum.num_selected: invalid value 0; allowed: an integer >= 1",
        ),
        (
            "strategy.bulyan.num_malicious=-1",
            "strategy.bulyan.num_malicious: invalid value -1; allowed: an integer >= 0",
        ),
        (
            "strategy.norm_bounding.max_norm=0",
            "strategy.norm_bounding.max_norm: invalid value 0.0; allowed: a number > 0",
        ),
        ("server.dp.clip_learning_rate=0", "server.dp.clip_learning_rate: invalid value 0.0; allowed: a number > 0"),
        ("num_clients=0", "num_clients: invalid value 0; allowed: an integer >= 1"),
    ],
)
def test_what_the_strategies_trust_the_config_refuses_in_one_line(override, message):
    """A strategy takes its settings from the config unchecked: every value its constructor used to refuse is the
    config's one-line error (whichever strategy is chosen)."""
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == message


def test_an_invalid_value_is_worded_one_way():
    from flb.errors import invalid_value, require

    assert str(invalid_value("a.b", "x", "y | z")) == "a.b: invalid value 'x'; allowed: y | z"
    assert str(invalid_value("a.b", "x" * 200, "y")) == f"a.b: invalid value '{'x' * 79}...; allowed: y"
    require(True, "a.b", "x", "y")
    with pytest.raises(ConfigError, match=r"^a\.b: invalid value 3; allowed: y$"):
        require(False, "a.b", 3, "y")


def test_batched_mode_refuses_dpsgd_in_one_line():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["execution.mode=batched", "client.local_dp=true", "client.dp.mode=dpsgd"])
    assert str(info.value).startswith(
        "execution.mode: invalid value 'batched'; allowed: sequential or processes "
        "with DP-SGD (opacus clips each example's gradient"
    )
    assert load_config(None, ["execution.mode=batched", "client.local_dp=true"]).execution.mode == "batched"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["execution.mode=batched"], "execution.mode: invalid value 'batched'; allowed: sequential with mode split"),
        (["client.local_dp=true"], "mode: invalid value 'split'; allowed: federated with local or server DP"),
        (
            ["strategy.name=scaffold"],
            "strategy.name: invalid value 'scaffold'; allowed: a strategy without a client-side",
        ),
        (["comm.compression=int8"], "comm.compression: invalid value 'int8'; allowed: none with mode split"),
        (["comm.broadcast_compression=nf4"], "comm.broadcast_compression: invalid value 'nf4'; allowed: none with"),
    ],
)
def test_split_mode_refuses_what_it_does_not_combine_with_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["mode=split", *overrides])
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_seed_bounds_are_inclusive_where_they_should_be():
    assert load_config(None, ["seed=0"]).seed == 0
    assert load_config(None, ["seed=4294967295"]).seed == 2**32 - 1


@pytest.mark.parametrize(
    "content, message",
    [
        (b"num_rounds: 2\nseed: \xff\xfe\n", "is not UTF-8 text (byte 0xff on line 2); save it as UTF-8"),
        (b"seed: 2001-13-01\n", "is not valid YAML (month must be in 1..12)"),
        # too deep for the recursion limit: not valid YAML; below a raised limit (py-evm raises it): a list, not a
        # mapping
        (b"[" * 3000 + b"]" * 3000, "config.yaml' "),
        (b"seed: !!timestamp x\n", "is not valid YAML"),
        (b"- 1\n- 2\n", "must hold a mapping of keys, not list"),
        (b'"multi\\nline": 1\n', "'multi\\nline': unknown key"),
    ],
)
def test_bad_config_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_byte_order_mark_is_fine(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes("\ufeffnum_rounds: 3\n".encode())
    assert load_config(path).num_rounds == 3


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            {"accelerator_config": True},
            "sft.training_arguments.accelerator_config: invalid value True; allowed: dict | str | null",
        ),  # SFTConfig would open(True), that is stdout, and close it
        (
            {"weight_decay": "1e-2"},
            "sft.training_arguments.weight_decay: invalid value '1e-2'; allowed: float (YAML reads "
            "1e-2 as text: write 1.0e-2)",
        ),
        (
            {"learning_rat": 0.1},
            "sft.training_arguments.learning_rat: SFTConfig has no such argument; did you mean 'learning_rate'?",
        ),
        ({"seed": 3}, "sft.training_arguments.seed: FLB sets it; set seed instead"),
        (
            {"eval_strategy": "sometimes"},
            "sft.training_arguments.eval_strategy: SFTConfig refuses 'sometimes' (sometimes is "
            "not a valid IntervalStrategy",
        ),
        (
            {"fp16": True, "bf16": True},
            "sft.training_arguments: SFTConfig refuses these together (At most one of fp16 and bf16 can be True",
        ),
    ],
)
def test_training_arguments_are_checked_before_the_run(arguments, message):
    """flb.model.sft_settings.check_training_arguments: main calls it before it creates the run directory."""
    from flb.config import SFTSettings
    from flb.model.sft_settings import check_training_arguments

    with pytest.raises(ConfigError) as info:
        check_training_arguments(SFTSettings(training_arguments=arguments), use_cpu=True)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    check_training_arguments(
        SFTSettings(training_arguments={"lr_scheduler_type": "linear", "weight_decay": 0.01}), use_cpu=True
    )
