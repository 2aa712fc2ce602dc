"""The command line's options, shared by main_simple_fl.py and the Flower ServerApp (its `flb-args`): the flags, and
the config they resolve to, new or resumed."""

from __future__ import annotations

import argparse

from flb.config import Config, apply_override, config_from_dict, load_config, parse_bool
from flb.errors import ConfigError

# What --resume --set may change: nothing here alters what has been trained, recorded or spent so far.
RESUMABLE_KEYS = (
    "num_rounds",
    "eval.max_new_tokens",
    "eval.batch_size",
    "server.max_client_failures",
    "server.round_deadline_s",
    "server.min_fit_fraction",
    "chain.rpc_url",
    "chain.explorer_url",
    "chain.password_env",
    "client.dp.allow_over_target",
    "execution.mode",
    "execution.workers",
    "execution.devices",
    "execution.memory_budget_mb",
    "notify.url",
    "notify.command",
    "notify.headers",
    "notify.timeout_s",
    "tracking.backends",
    "tracking.uri",
    "split.channel",
    "split.address",
    "split.timeout_s",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Federated LoRA fine-tuning with an audit trail.")
    parser.add_argument("--config", help="YAML config (default: config.yaml next to this file)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set num_rounds=3 (repeatable)",
    )
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last completed round")
    parser.add_argument("--use_server_dp", metavar="true|false", help="server-side DP-FedAvg with fixed clipping")
    parser.add_argument(
        "--allow-over-budget",
        action="store_true",
        help="let an extended run go past client.dp.target_epsilon (recorded in the summary)",
    )
    parser.add_argument("--export-merged", action="store_true", help="also save base + final adapter merged")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="list every ledger transaction in the end summary (the explorer always does)",
    )
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> Config:
    use_server_dp = parse_bool("--use_server_dp", args.use_server_dp) if args.use_server_dp is not None else None
    overrides = args.overrides + (["client.dp.allow_over_target=true"] if args.allow_over_budget else [])
    if not args.resume:
        return load_config(args.config, overrides, use_server_dp)
    if args.config or use_server_dp is not None:
        raise ConfigError(
            "--resume: the run keeps its own config; drop --config/--use_server_dp (only --set may extend it)"
        )
    from flb.run.directory import RunDir
    from flb.run.redaction import REDACTED

    data = RunDir.open(args.resume).config()
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key not in RESUMABLE_KEYS:
            raise ConfigError(
                f"--resume --set {key}: would change what the run has already done; allowed: "
                f"{', '.join(RESUMABLE_KEYS)} (start a new run for anything else)"
            )
        apply_override(data, item)
    config = config_from_dict(data)
    for key, value in (
        ("chain.rpc_url", config.chain.rpc_url if config.chain_record else None),
        ("notify.url", config.notify.url),
        ("notify.command", config.notify.command),
        ("tracking.uri", config.tracking.uri),
    ):
        if value and REDACTED in value:
            raise ConfigError(
                f"{key}: the run directory keeps it with its credentials redacted; pass --set {key}=... again"
            )
    return config
