"""Inspect and verify a run's audit trail.

    python -m chain.explorer RUN_DIR                        # from RUN_DIR/chain/trail.json
    python -m chain.explorer --rpc URL --address ADDR       # live, from any node
    python -m chain.explorer --verify RUN_DIR               # recompute adapter digests, compare to chain

Prints blocks, transactions, decoded calls and events, cumulative scores per client and per-round
digests. --verify exits 1 naming each round and client whose file does not match the chain."""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from chain.errors import ChainError
from chain.trail import collect_trail, contract_tx_hashes, read_trail


def rounds_from(trail: dict) -> dict[int, dict]:
    """Every RoundRecorded event: round -> global digest, clients, update digests, scores."""
    rounds = {}
    for event in _events(trail, "RoundRecorded"):
        args = event["args"]
        rounds[args["round"]] = {"global_digest": args["globalDigest"], "clients": args["clients"],
                                 "update_digests": args["updateDigests"], "scores": args["scores"]}
    return rounds


def scores_from(trail: dict) -> dict[str, int]:
    """Cumulative score per address: the sum of its ScoreAdd events."""
    scores: dict[str, int] = {}
    for event in _events(trail, "ScoreAdd"):
        scores[event["args"]["user"]] = scores.get(event["args"]["user"], 0) + event["args"]["score"]
    return scores


def _events(trail: dict, name: str):
    for tx in trail["transactions"]:
        if tx["status"] == 1:
            yield from (event for event in tx["events"] if event["event"] == name)


def verify(run_dir: Path, trail: dict) -> tuple[list[str], int]:
    """Problems found comparing RUN_DIR's adapter files with the chain, and how many files matched."""
    problems, matched = [], 0
    rounds = rounds_from(trail)
    client_ids = {address: i for i, address in enumerate(trail.get("accounts", {}).get("clients", []))}
    for number, record in sorted(rounds.items()):
        folder = run_dir / f"round_{number}"
        checks = [(folder / "adapter_model.safetensors", record["global_digest"], f"round {number} global adapter")]
        for address, digest in zip(record["clients"], record["update_digests"]):
            if address not in client_ids:
                problems.append(f"round {number}: client address {address} is not an account of this run")
                continue
            client = client_ids[address]
            checks.append((folder / "updates" / f"client_{client}.safetensors", digest, f"round {number} client {client}"))
        for path, expected, what in checks:
            problem = _check_file(path, expected, what)
            problems += [problem] if problem else []
            matched += problem is None
    for number in sorted(_rounds_on_disk(run_dir) - rounds.keys()):
        problems.append(f"round {number}: {run_dir / f'round_{number}'} exists but the chain holds no record of it")
    return problems, matched


def _check_file(path: Path, expected: str, what: str) -> str | None:
    from flb.digests import adapter_file_digest

    expected = expected.removeprefix("0x")
    if not path.is_file():
        return f"{what}: {path} is missing; the chain holds digest {expected}"
    actual = adapter_file_digest(path)
    return None if actual == expected else f"{what}: {path} has digest {actual} but the chain holds {expected}"


def _rounds_on_disk(run_dir: Path) -> set[int]:
    return {int(p.name[6:]) for p in run_dir.glob("round_*") if p.is_dir() and p.name[6:].isdigit()}


def format_trail(trail: dict) -> list[str]:
    names = account_names(trail)

    def name(address: str) -> str:
        return f"{address} ({names[address]})" if address in names else address

    deployment = trail.get("deployment") or {}
    lines = [f"FLB audit trail on {trail.get('chain')} (chain id {trail.get('chain_id')})",
             f"contract {trail['contract']}" + (f", owner {name(deployment['owner'])}" if deployment.get("owner") else ""), ""]
    transactions = {tx["hash"]: tx for tx in trail["transactions"]}
    for block in trail["blocks"]:
        when = datetime.fromtimestamp(block["timestamp"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        lines.append(f"block {block['number']}  {block['hash']}  {when}  gas {block['gas_used']}")
        for tx_hash in block["transactions"]:
            lines += _format_tx(transactions[tx_hash], name, trail.get("explorer_url"))
    lines += ["", "cumulative scores"]
    lines += [f"  {name(address)}  {score}" for address, score in sorted(scores_from(trail).items(), key=lambda kv: names.get(kv[0], kv[0]))]
    lines += ["", "rounds"]
    for number, record in sorted(rounds_from(trail).items()):
        lines.append(f"  round {number}  global adapter {record['global_digest']}")
        for address, digest, score in zip(record["clients"], record["update_digests"], record["scores"]):
            lines.append(f"    {name(address)}  update {digest}  score {score}")
    return lines


def _format_tx(tx: dict, name, explorer_url: str | None) -> list[str]:
    status = "ok" if tx["status"] == 1 else "REVERTED"
    args = ", ".join(f"{key}={_short(value)}" for key, value in tx["args"].items())
    lines = [f"  tx {tx['hash']}  from {name(tx['from'])}  nonce {tx['nonce']}  {status}  gas {tx['gas_used']}",
             f"    {tx['function']}({args})"]
    for event in tx["events"]:
        event_args = ", ".join(f"{key}={name(value) if isinstance(value, str) else _short(value)}" for key, value in event["args"].items())
        lines.append(f"    event {event['event']}({event_args})")
    if explorer_url:
        lines.append(f"    {explorer_url.format(tx=tx['hash'])}")
    return lines


def _short(value) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def account_names(trail: dict) -> dict[str, str]:
    accounts = trail.get("accounts") or {}
    names = {address: f"client {i}" for i, address in enumerate(accounts.get("clients", []))}
    if accounts.get("admin"):
        names[accounts["admin"]] = "admin"
    return names


def live_trail(rpc_url: str, address: str, from_block: int, run_dir: Path | None, explorer_url: str | None) -> dict:
    from web3 import Web3
    from web3.middleware import ExtraDataToPOAMiddleware

    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
    accounts_file = run_dir / "chain" / "accounts.json" if run_dir else None
    accounts = json.loads(accounts_file.read_text()) if accounts_file and accounts_file.is_file() else {}
    meta = {"backend": "rpc", "chain": f"rpc at {rpc_url}", "chain_id": w3.eth.chain_id, "accounts": accounts,
            "explorer_url": explorer_url}
    return collect_trail(w3, address, contract_tx_hashes(w3, address, from_block), meta)


def load(args) -> dict:
    run_dir = args.verify or args.run_dir
    if args.rpc:
        if not args.address:
            raise ChainError("--rpc needs --address ADDR, the FLB contract to read")
        return live_trail(args.rpc, args.address, args.from_block, run_dir, args.explorer_url)
    if run_dir is None:
        raise ChainError("give a RUN_DIR, or --rpc URL --address ADDR for a live chain")
    trail = read_trail(run_dir)
    if trail is None:
        raise ChainError(f"{run_dir / 'chain' / 'trail.json'}: not found; run with chain_record: true, "
                         "or read a live chain with --rpc URL --address ADDR")
    if args.explorer_url:
        trail["explorer_url"] = args.explorer_url
    return trail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chain.explorer", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", type=Path, help="a run directory (reads RUN_DIR/chain/trail.json)")
    parser.add_argument("--verify", type=Path, metavar="RUN_DIR", help="check RUN_DIR's adapter files against the chain")
    parser.add_argument("--rpc", metavar="URL", help="read a live chain instead of the run's exported trail")
    parser.add_argument("--address", help="the FLB contract address (with --rpc)")
    parser.add_argument("--from-block", type=int, default=0, help="first block to scan (with --rpc)")
    parser.add_argument("--explorer-url", help="link template per transaction, e.g. https://explorer/tx/{tx}")
    args = parser.parse_args(argv)
    try:
        trail = load(args)
    except (ChainError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.verify:
        print("\n".join(format_trail(trail)))
        return 0
    problems, matched = verify(args.verify, trail)
    for problem in problems:
        print(f"MISMATCH {problem}")
    print(f"verify: {matched} adapter files match the chain, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
