"""Typed, validated configuration: config.yaml gives every default, `--set a.b=value` overrides.

Each section is a frozen dataclass whose fields carry their help text; `__post_init__` rejects bad values with one line
naming the key, the bad value and what is allowed. Unknown keys are errors with a "did you mean" hint. Inside:
  fields.py      a field with its help text, the value rules several sections share
  sections.py    model, sft, dpo, client, server, partition, comm, execution, split
  evaluation.py  eval and its suites
  services.py    notify, tracking, chain
  strategies.py  each strategy's section and STRATEGIES, the one registry of strategies
  root.py        Config: every section together, the rules across sections
  loading.py     YAML and overrides to a Config (load_config)
"""

from flb.config.evaluation import (
    EVAL_SUITES,
    EvalSettings,
    HumanEvalSettings,
    LmEvalSettings,
    MultipleChoiceSettings,
)
from flb.config.loading import (
    DEFAULT_CONFIG_PATH,
    apply_override,
    build,
    config_from_dict,
    load_config,
    parse_bool,
)
from flb.config.root import (
    Config,
)
from flb.config.sections import (
    CLIENT_OBJECTIVES,
    DPO_LOSS_TYPES,
    EXECUTION_MODES,
    SPLIT_CHANNELS,
    TARGET_MODULE_RULES,
    ClientDPSettings,
    ClientSettings,
    CommSettings,
    DPOSettings,
    ExecutionSettings,
    LoraSettings,
    ModelSettings,
    PartitionSettings,
    ServerDPSettings,
    ServerSettings,
    SFTSettings,
    SimulationSettings,
    SplitSettings,
)
from flb.config.services import (
    ENV_VAR_NAME,
    HTTP_HEADER_NAME,
    TRACKING_BACKENDS,
    ChainSettings,
    NotifySettings,
    TrackingSettings,
)
from flb.config.strategies import (
    STRATEGIES,
    BulyanSettings,
    FedAdagradSettings,
    FedAdamSettings,
    FedAvgMSettings,
    FedBuffSettings,
    FedProxSettings,
    FedYogiSettings,
    HetLoRASettings,
    KrumSettings,
    MultiKrumSettings,
    NormBoundingSettings,
    ScaffoldSettings,
    StrategySettings,
    StrategySpec,
    TrimmedMeanSettings,
    strategy_names,
)

__all__ = [
    "BulyanSettings",
    "CLIENT_OBJECTIVES",
    "ChainSettings",
    "ClientDPSettings",
    "ClientSettings",
    "CommSettings",
    "Config",
    "DEFAULT_CONFIG_PATH",
    "DPOSettings",
    "DPO_LOSS_TYPES",
    "ENV_VAR_NAME",
    "EVAL_SUITES",
    "EXECUTION_MODES",
    "EvalSettings",
    "ExecutionSettings",
    "FedAdagradSettings",
    "FedAdamSettings",
    "FedBuffSettings",
    "FedAvgMSettings",
    "FedProxSettings",
    "FedYogiSettings",
    "HetLoRASettings",
    "HTTP_HEADER_NAME",
    "HumanEvalSettings",
    "KrumSettings",
    "LmEvalSettings",
    "LoraSettings",
    "ModelSettings",
    "MultiKrumSettings",
    "MultipleChoiceSettings",
    "NormBoundingSettings",
    "NotifySettings",
    "PartitionSettings",
    "SFTSettings",
    "SPLIT_CHANNELS",
    "STRATEGIES",
    "ScaffoldSettings",
    "ServerDPSettings",
    "ServerSettings",
    "SimulationSettings",
    "SplitSettings",
    "StrategySettings",
    "StrategySpec",
    "TARGET_MODULE_RULES",
    "TRACKING_BACKENDS",
    "TrackingSettings",
    "TrimmedMeanSettings",
    "apply_override",
    "build",
    "config_from_dict",
    "load_config",
    "parse_bool",
    "strategy_names",
]
