"""Inspect a run's audit trail, and verify a run directory against a chain node.

    python -m chain.explorer RUN_DIR                          # the trail the run exported (RUN_DIR/chain/trail.json)
    python -m chain.explorer --rpc URL --address ADDR         # live, from any node
    python -m chain.explorer RUN_DIR --verify [--recompute] [--strict] [--clients FILE] [--contract ADDR]

--verify never trusts the run's own trail.json: it reads the chain from a node, the run's rpc node or
`--rpc URL`; where the only copy of the chain is one the run wrote itself (the embedded chain or an
anvil state in RUN_DIR/chain) it reads that copy and says in its first line that this is a consistency
check of a local export, not independent evidence. It reads the contract `--contract` pins (else the one the
run's deployment.json names) and prints it, its chain id, deployer and deployment block, and every participant.
It exits 1 naming every file, signature or record that does not match (chain/verify.py says what is checked;
docs/audit-spec.md specifies it); with --strict also when anything could not be checked (a NOTE) or the chain
was read from the run's own export. Openings of salted commitments are read from `--openings DIR` and from
RUN_DIR/private/*/ when present (their owners' files).

This module is a front end: for --recompute it hands the verifier the server's strategies (server/replay.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from chain.deployment import check_same_chain
from chain.errors import ChainError
from chain.trail import client_ids, collect_trail, contract_tx_hashes, read_trail
from chain.verify import Replayer, Report, rounds_from, scores_from, verify
from flb.run.redaction import REDACTED, redact_text, redact_url

LIST_SHOWN = 3  # a long list or many events of one transaction: how many the listing shows
ADDRESS = r"0x[0-9a-fA-F]{40}"
INDEPENDENT = "verify: reading {source}, a node independent of the run directory"
LOCAL_EXPORT = (
    "verify: a consistency check of a local export, not independent evidence: the only copy of this "
    "chain is the one the run wrote itself ({source}); check against a node with --rpc URL"
)


def format_trail(trail: dict) -> list[str]:
    names = account_names(trail)

    def name(address: str) -> str:
        return f"{address} ({names[address]})" if address in names else address

    deployment = trail.get("deployment") or {}
    lines = [
        f"FLB audit trail on {trail.get('chain')} (chain id {trail.get('chain_id')})",
        f"contract {trail['contract']}" + (f", owner {name(deployment['owner'])}" if deployment.get("owner") else ""),
        "",
    ]
    transactions = {tx["hash"]: tx for tx in trail["transactions"]}
    for block in trail["blocks"]:
        when = datetime.fromtimestamp(block["timestamp"], UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        lines.append(f"block {block['number']}  {block['hash']}  {when}  gas {block['gas_used']}")
        for tx_hash in block["transactions"]:
            lines += _format_tx(transactions[tx_hash], name, trail.get("explorer_url"))
    lines += ["", "cumulative scores"]
    lines += [
        f"  {name(address)}  {score}"
        for address, score in sorted(scores_from(trail).items(), key=lambda kv: names.get(kv[0], kv[0]))
    ]
    lines += ["", "rounds"]
    for number, record in sorted(rounds_from(trail).items()):
        lines.append(
            f"  round {number}  global adapter 0x{record['global_digest']}  metrics 0x{record['metrics_digest']}"
        )
        if "participants_commitment" in record:
            lines.append(f"    participants sealed: commitment 0x{record['participants_commitment']}")
            continue
        starts = record.get("start_rounds")
        for index, (address, digest, count, score) in enumerate(
            zip(record["clients"], record["update_digests"], record["num_examples"], record["scores"])
        ):
            started = "" if starts is None else f"  from round {starts[index]} (staleness {number - 1 - starts[index]})"
            lines.append(f"    {name(address)}  update 0x{digest}{started}  examples {count}  score {score}")
    lines += [f"resent: {entry['record']}: {entry['note']}" for entry in trail.get("resent", [])]
    return lines


def _format_tx(tx: dict, name, explorer_url: str | None) -> list[str]:
    """A transaction, its call and its events; a batch's long lists and its many same events are cut to their
    first LIST_SHOWN (trail.json holds them all)."""
    status = "ok" if tx["status"] == 1 else "REVERTED"
    args = ", ".join(f"{key}={_short(value)}" for key, value in tx["args"].items())
    lines = [
        f"  tx {tx['hash']}  from {name(tx['from'])}  nonce {tx['nonce']}  {status}  gas {tx['gas_used']}",
        f"    {tx['function']}({args})",
    ]
    for shown, event in enumerate(tx["events"]):
        if shown == LIST_SHOWN and len(tx["events"]) > LIST_SHOWN + 1:
            lines.append(f"    ... {len(tx['events']) - LIST_SHOWN} more events (all in chain/trail.json)")
            break
        event_args = ", ".join(
            f"{key}={name(value) if isinstance(value, str) else _short(value)}" for key, value in event["args"].items()
        )
        lines.append(f"    event {event['event']}({event_args})")
    if explorer_url:
        lines.append(f"    {explorer_url.format(tx=tx['hash'])}")
    return lines


def _short(value) -> str:
    if isinstance(value, list) and len(value) > LIST_SHOWN + 1:
        return json.dumps(value[:LIST_SHOWN])[:-1] + f", ... {len(value)} in all]"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def account_names(trail: dict) -> dict[str, str]:
    accounts = trail.get("accounts") or {}
    names = {address: f"client {client_id}" for address, client_id in client_ids(accounts).items()}
    if accounts.get("admin"):
        names[accounts["admin"]] = "admin"
    return names


def live_trail(w3, address: str, from_block: int, accounts: dict, description: str, explorer_url=None) -> dict:
    """The trail as a node holds it now: every transaction that emitted an event of the contract, decoded."""
    meta = {
        "backend": "node",
        "chain": description,
        "chain_id": w3.eth.chain_id,
        "accounts": accounts,
        "explorer_url": explorer_url,
    }
    return collect_trail(w3, address, contract_tx_hashes(w3, address, from_block), meta)


@contextlib.contextmanager
def chain_of_run(run_dir: Path, rpc: str | None):
    """(w3, first line) for the chain `run_dir` was recorded on: `rpc`, the run's rpc node, or the run's own
    copy (embedded chain file, anvil state) read from a scratch copy that is never written back."""
    from web3 import Web3

    deployment = _deployment(run_dir)
    backend = deployment.get("backend")
    if rpc or backend == "rpc":
        url = rpc or json.loads((run_dir / "config.json").read_text())["chain"]["rpc_url"]
        if REDACTED in url:
            raise ChainError(
                "--verify: the run's chain.rpc_url is stored with its credentials redacted; pass --rpc URL"
            )
        yield Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30})), INDEPENDENT.format(source=redact_url(url))
        return
    with tempfile.TemporaryDirectory() as scratch:
        if backend == "embedded":
            from chain.embedded import EMBEDDED_CHAIN_FILE, open_embedded_export

            source = run_dir / "chain" / EMBEDDED_CHAIN_FILE
            yield open_embedded_export(source), LOCAL_EXPORT.format(source=source)
        elif backend == "anvil":
            from chain.anvil import AnvilProcess
            from chain.backends import ANVIL_STATE_FILE

            source = run_dir / "chain" / ANVIL_STATE_FILE
            copy = Path(scratch) / ANVIL_STATE_FILE
            shutil.copyfile(source, copy)
            anvil = AnvilProcess(copy, num_accounts=1)
            anvil.start()
            try:
                yield Web3(Web3.HTTPProvider(anvil.url)), LOCAL_EXPORT.format(source=source)
            finally:
                anvil.stop()
        else:
            raise ChainError(
                f"--verify: {run_dir / 'chain' / 'deployment.json'} names backend {backend!r}; "
                "pass --rpc URL of the node that holds the run's contract"
            )


def _deployment(run_dir: Path) -> dict:
    path = run_dir / "chain" / "deployment.json"
    if not path.is_file():
        raise ChainError(f"{path}: not found; this run recorded nothing on a chain (chain_record: false?)")
    return json.loads(path.read_text())


def read_openings(folders: list[Path]) -> dict[str, dict]:
    """Commitment -> opening, from every openings.json in `folders` (a party's private directory)."""
    openings = {}
    for folder in folders:
        path = Path(folder) / "openings.json"
        if path.is_file():
            openings.update(json.loads(path.read_text()))
    return openings


def verify_run(
    run_dir: Path,
    rpc: str | None,
    openings: list[Path],
    recompute: bool,
    trusted_clients: set[str] | None = None,
    contract: str | None = None,
) -> tuple[str, Report]:
    """The first line saying what was read, and the report. `contract` pins the contract read (the run's
    deployment.json naming another is a problem); `trusted_clients` are the addresses the auditor knows."""
    deployment = _deployment(run_dir)
    accounts_path = run_dir / "chain" / "accounts.json"
    accounts = json.loads(accounts_path.read_text()) if accounts_path.is_file() else {}
    with chain_of_run(run_dir, rpc) as (w3, first_line):
        if contract is None:
            check_same_chain(w3, deployment, w3.eth.chain_id, "the node --verify reads")
        address = w3.to_checksum_address(contract or deployment["address"])
        if contract is not None and not w3.eth.get_code(address):
            raise ChainError(
                f"--contract {contract}: no contract there on the chain --verify reads; pass the FLB contract's address"
            )
        trail = live_trail(w3, address, 0 if contract else deployment.get("block") or 0, accounts, first_line)
    owners = [p for p in (run_dir / "private").glob("*") if p.is_dir()] if (run_dir / "private").is_dir() else []
    report = verify(
        run_dir,
        trail,
        openings=read_openings(owners + openings),
        replayer=_replayer() if recompute else None,
        trusted_clients=trusted_clients,
    )
    if contract is not None:
        report.check(
            deployment["address"].lower() == address.lower(),
            f"{run_dir / 'chain' / 'deployment.json'} names contract {deployment['address']}, not the pinned "
            f"{address}: the run directory points auditors at another contract",
        )
    return first_line, report


def _replayer() -> Replayer:
    from server.replay import not_replayable, replay

    return Replayer(not_replayable=not_replayable, replay=replay)


def read_clients(path: Path) -> set[str]:
    """The addresses in an auditor's --clients FILE (one 0x address a line; blank lines and # comments ignored),
    lower-cased."""
    if not Path(path).is_file():
        raise ChainError(f"--clients {path}: no such file; give a file with one participant address a line")
    addresses = set()
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if not re.fullmatch(ADDRESS, text):
            raise ChainError(
                f"--clients {path} line {number}: {text!r} is not a 0x-prefixed 20-byte address; write "
                "one participant address a line"
            )
        addresses.add(text.lower())
    return addresses


def load_trail(args) -> dict:
    if args.rpc and not args.run_dir:
        from web3 import Web3

        if not args.address:
            raise ChainError("--rpc needs --address ADDR (the FLB contract) or a RUN_DIR")
        w3 = Web3(Web3.HTTPProvider(args.rpc, request_kwargs={"timeout": 30}))
        return live_trail(w3, args.address, args.from_block, {}, f"rpc at {redact_url(args.rpc)}", args.explorer_url)
    if args.run_dir is None:
        raise ChainError("give a RUN_DIR, or --rpc URL --address ADDR for a live chain")
    trail = read_trail(args.run_dir)
    if trail is None:
        raise ChainError(
            f"{args.run_dir / 'chain' / 'trail.json'}: not found; run with chain_record: true, "
            "or read a live chain with --rpc URL --address ADDR"
        )
    if args.explorer_url:
        trail["explorer_url"] = args.explorer_url
    return trail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chain.explorer", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", type=Path, help="a run directory")
    parser.add_argument("--verify", action="store_true", help="check RUN_DIR's files against the chain")
    parser.add_argument(
        "--recompute", action="store_true", help="with --verify: recompute every round whose aggregate is deterministic"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="with --verify: also fail on anything not checked (a NOTE) and on a run's own chain export",
    )
    parser.add_argument(
        "--clients",
        type=Path,
        metavar="FILE",
        help="with --verify: the real participants' addresses, one a line; any other is a mismatch",
    )
    parser.add_argument(
        "--contract",
        metavar="ADDR",
        help="with --verify: the FLB contract you expect (not the one the run directory names)",
    )
    parser.add_argument(
        "--openings",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="with --verify: a folder holding an openings.json of salted commitments (repeatable)",
    )
    parser.add_argument("--rpc", metavar="URL", help="read this node instead of the run's own chain or export")
    parser.add_argument("--address", help="the FLB contract address (with --rpc and no RUN_DIR)")
    parser.add_argument("--from-block", type=int, default=0, help="first block to scan (with --rpc and no RUN_DIR)")
    parser.add_argument("--explorer-url", help="link template per transaction, e.g. https://explorer/tx/{tx}")
    args = parser.parse_args(argv)
    try:
        if args.run_dir is not None and not args.run_dir.is_dir():
            raise ChainError(
                f"{args.run_dir}: the run directory does not exist; give output_dir/<run-id> (e.g. runs/latest)"
            )
        if args.verify:
            if args.run_dir is None:
                raise ChainError("--verify needs a RUN_DIR: python -m chain.explorer RUN_DIR --verify")
            if args.contract is not None and not re.fullmatch(ADDRESS, args.contract):
                raise ChainError(
                    f"--contract {args.contract}: not a 0x-prefixed 20-byte address; pass the FLB contract's address"
                )
            trusted = read_clients(args.clients) if args.clients else None
            first_line, report = verify_run(
                args.run_dir, args.rpc, args.openings, args.recompute, trusted, args.contract
            )
        else:
            print("\n".join(format_trail(load_trail(args))))
            return 0
    except (ChainError, OSError, ValueError) as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    print(first_line)
    for fact in report.facts:
        print(f"verify: {fact}")
    for problem in report.problems:
        print(f"MISMATCH {problem}")
    for note in report.notes:
        print(f"NOTE {note}")
    print(f"verify: {report.passed} checks passed, {len(report.problems)} problems, {len(report.notes)} notes")
    unproven = (["notes"] if report.notes else []) + (
        [] if first_line.startswith(INDEPENDENT.split("{")[0]) else ["a chain the run wrote itself"]
    )
    if args.strict and unproven:
        print(f"verify --strict: fails on {' and '.join(unproven)} (see above)")
        return 1
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
