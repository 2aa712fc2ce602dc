"""Federated LoRA fine-tuning in one process: `python main_simple_fl.py [--config F] [--set k=v]...`.

This file only wires the pieces together: config -> data -> model -> clients, strategy, evaluator,
ledger -> the round coordinator -> outputs.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from flb.config import Config, config_from_dict, load_config, apply_override, parse_bool
from flb.errors import FLBError, ConfigError

log = logging.getLogger("flb")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Federated LoRA fine-tuning with an audit trail.")
    parser.add_argument("--config", help="YAML config (default: config.yaml next to this file)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set num_rounds=3 (repeatable)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last completed round")
    parser.add_argument("--use_server_dp", metavar="true|false", help="server-side DP-FedAvg with fixed clipping")
    parser.add_argument("--export-merged", action="store_true", help="also save base + final adapter merged")
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> Config:
    use_server_dp = parse_bool("--use_server_dp", args.use_server_dp) if args.use_server_dp is not None else None
    if not args.resume:
        return load_config(args.config, args.overrides, use_server_dp)
    if args.config or use_server_dp is not None:
        raise ConfigError("--resume: the run keeps its own config; drop --config/--use_server_dp (only --set may extend it)")
    from flb.rundir import RunDir

    data = RunDir.open(args.resume).config()
    for item in args.overrides:
        apply_override(data, item)
    return config_from_dict(data)


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

    from flb.modeling import add_lora, load_base_model, load_tokenizer

    tokenizer = load_tokenizer(config.model)
    base = load_base_model(config.model)
    set_seed(config.seed)  # the initial LoRA A matrices
    return tokenizer, add_lora(base, config.model)


def open_ledger(config: Config, run_path: Path):
    from flb.types import NullLedger

    if not config.chain_record:
        return NullLedger()
    from chain.ledger import open_ledger as open_chain_ledger

    return open_chain_ledger(config.chain, run_path, config.num_clients)


def scores_by_quality(config: Config) -> bool:
    return config.chain_record and config.chain.scoring == "quality"


def build_clients(config: Config, shards: list[list[dict]], model, tokenizer, work_dir: Path) -> list:
    return [build_client(config, i, shard, model, tokenizer, work_dir) for i, shard in enumerate(shards)]


def build_client(config: Config, client_id: int, shard: list[dict], model, tokenizer, work_dir: Path):
    """One SFTClient with its privacy hook; the Flower ClientApp builds its single client with this too."""
    from client.privacy import local_privacy
    from client.sft import SFTClient

    return SFTClient(client_id=client_id, records=shard, model=model, tokenizer=tokenizer, settings=config.sft,
                     local_steps=config.local_steps, seed=config.seed, work_dir=work_dir,
                     use_cpu=config.model.device_map == "cpu",
                     privacy=local_privacy(config.client, num_examples=len(shard), batch_size=config.sft.batch_size,
                                           learning_rate=config.sft.learning_rate, local_steps=config.local_steps,
                                           num_rounds=config.num_rounds, seed=config.seed, client_id=client_id))


def run(config: Config, resume: str | None = None, export_merged: bool = False, fleet=None) -> Path:
    """One whole run. `fleet` (the Flower ServerApp's) supplies clients on other machines and how to fit them;
    without it the clients train here, in turn."""
    from flb.digests import adapter_digest
    from flb.modeling import get_adapter_state
    from flb.report import privacy_lines, summary_table, write_plots, write_summary
    from flb.rundir import RunDir
    from server.coordinator import RoundCoordinator, fit_in_turn
    from server.evaluation import Evaluator
    from server.strategy import build_strategy

    if export_merged and config.model.quantization is not None:
        raise ConfigError("--export-merged: cannot merge into a quantized base; rerun with model.quantization: null")
    # Everything that can reject the config or the inputs runs before a run directory exists.
    shards, eval_records = build_data(config)
    tokenizer, model = build_model(config)
    strategy = build_strategy(config)
    run_dir = RunDir.open(resume) if resume else RunDir.create(config.output_dir, config.to_dict())
    _log_to(run_dir.path / "run.log")
    log.info("run directory: %s", run_dir.path)
    if fleet is None:
        clients, fit_all = build_clients(config, shards, model, tokenizer, run_dir.path / "work"), fit_in_turn
    else:
        clients, fit_all = fleet.clients, fleet.fit_all
    evaluator = Evaluator(model=model, tokenizer=tokenizer, records=eval_records, settings=config.eval, sft=config.sft,
                          work_dir=run_dir.path / "work", use_cpu=config.model.device_map == "cpu")
    ledger = open_ledger(config, run_dir.path)
    coordinator = RoundCoordinator(clients=clients, strategy=strategy, evaluate=evaluator.evaluate, ledger=ledger,
                                   run=run_dir, peft_config=model.peft_config["default"],
                                   clients_per_round=config.clients_per_round, min_clients=config.server.min_clients,
                                   seed=config.seed, fit_all=fit_all,
                                   contribution_loss=evaluator.eval_loss if scores_by_quality(config) else None)
    try:
        if resume:
            last_round, global_adapter, strategy_state, client_states = run_dir.read_checkpoint()
            coordinator.restore(strategy_state, client_states)
            log.info("resuming after round %d", last_round)
        else:
            last_round, global_adapter = 0, get_adapter_state(model)
            coordinator.record_baseline(global_adapter)
        global_adapter = coordinator.run_rounds(global_adapter, last_round + 1, config.num_rounds)
    finally:
        ledger.close()
    final_dir = run_dir.save_final(global_adapter, model.peft_config["default"])
    summary = write_summary(run_dir, adapter_digest(global_adapter))
    write_plots(run_dir)
    print("\n" + summary_table(run_dir.metrics()))
    for line in privacy_lines(run_dir.metrics()):
        print(line)
    print(f"\nfinal adapter: {final_dir}  (sha256 {summary['final_digest']})")
    print(f"plots: {run_dir.path / 'plots'}   metrics: {run_dir.path / 'metrics.jsonl'}")
    if config.chain_record:
        print(format_ledger_summary(ledger.summary()))
    if export_merged:
        print(f"merged model: {export_merged_model(model, tokenizer, global_adapter, run_dir.path)}")
    return run_dir.path


def format_ledger_summary(summary: dict) -> str:
    lines = [f"\nledger: {summary['chain']} (chain id {summary['chain_id']}), FLB contract {summary['contract']}"]
    for tx in summary["transactions"]:
        link = f"  {tx['link']}" if tx.get("link") else ""
        lines.append(f"  {tx['record']:<32} {tx['status']:<10} {tx['tx'] or '-'}{link}")
    if summary["pending"] or summary["failed"]:
        lines.append(f"  {summary['pending']} records pending (sent on --resume), {summary['failed']} failed (see run.log)")
    lines.append(f"inspect: {summary['explorer']}\nverify the files against the chain: {summary['verify']}")
    return "\n".join(lines)


def export_merged_model(model, tokenizer, adapter, run_path: Path) -> Path:
    from flb.modeling import set_adapter_state

    set_adapter_state(model, adapter)
    target = run_path / "merged"
    model.merge_and_unload().save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def _log_to(path: Path) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


def configure_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("flb", "server", "client", "chain", "flb_flower"):
        logging.getLogger(name).setLevel(logging.INFO)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # a CPU kernel hint on import, not a problem


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    try:
        args = parse_args(argv)
        run(resolve_config(args), resume=args.resume, export_merged=args.export_merged)
    except FLBError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
