"""The audit trail as plain JSON: blocks, transactions with decoded calls, receipts and events.

The ledger writes it to RUN_DIR/chain/trail.json (an embedded chain ends with its process; this
file outlives it); the explorer reads that file or collects the same dict live from a node."""

from __future__ import annotations

import json
from pathlib import Path

from chain.contract import flb_contract
from flb.atomic import write_json_atomic

TRAIL_FILE = "trail.json"


def client_ids(accounts: dict) -> dict[str, int]:
    """Each registered client's address -> its client id, as RUN_DIR/chain/accounts.json lists them (`clients` in
    registration order, `ids` beside them; a run written before `ids` registered its clients in id order). The ids only
    say which `client_<id>` files are whose: every file is checked against its address's on-chain record."""
    clients = accounts.get("clients", [])
    return dict(zip(clients, accounts.get("ids", range(len(clients)))))


def collect_trail(w3, address: str, tx_hashes: list[str], meta: dict, known: dict | None = None) -> dict:
    """Blocks, transactions and decoded events of `tx_hashes` on the FLB contract at `address`.
    `known` caches decoded transactions by hash across calls (a mined transaction never changes)."""
    contract = flb_contract(w3, address)
    known = {} if known is None else known
    for tx_hash in tx_hashes:
        if tx_hash not in known:
            known[tx_hash] = _transaction(w3, contract, tx_hash)
    transactions = [known[tx_hash] for tx_hash in tx_hashes if known[tx_hash] is not None]
    block_numbers = sorted({tx["block"] for tx in transactions})
    blocks = [_block(w3, number, transactions) for number in block_numbers]
    return {**meta, "contract": contract.address, "blocks": blocks, "transactions": transactions}


def contract_tx_hashes(w3, address: str, from_block: int = 0) -> list[str]:
    """Every transaction that emitted an event of the contract, in chain order."""
    logs = w3.eth.get_logs({"address": w3.to_checksum_address(address), "fromBlock": from_block, "toBlock": "latest"})
    return list(dict.fromkeys(_hex(log["transactionHash"]) for log in logs))


def _transaction(w3, contract, tx_hash: str) -> dict | None:
    """The decoded transaction, or None when this chain does not hold it (sent to a chain since reset)."""
    from web3.exceptions import TransactionNotFound

    try:
        tx = w3.eth.get_transaction(tx_hash)
        receipt = w3.eth.get_transaction_receipt(tx_hash)
    except TransactionNotFound:
        return None
    function, args = _decode_call(contract, tx)
    if function == "constructor":
        args = {"code_matches_artifact": _is_artifact_deployment(tx["input"])}
    return {
        "hash": _hex(tx_hash),
        "block": receipt["blockNumber"],
        "from": tx["from"],
        "to": tx.get("to"),
        "nonce": tx["nonce"],
        "status": receipt["status"],
        "gas_used": receipt["gasUsed"],
        "function": function,
        "args": args,
        "events": _decode_events(contract, receipt),
    }


def _is_artifact_deployment(data) -> bool:
    """The deployment's code is the committed artifact's bytecode (followed by the constructor's arguments)."""
    from chain.contract import load_artifact

    return _hex(data).lower().startswith(load_artifact()["bytecode"].lower())


def _decode_call(contract, tx) -> tuple[str, dict]:
    if not tx.get("to"):
        return "constructor", {}
    function, args = contract.decode_function_input(tx["input"])
    return function.fn_name, jsonable(args)


def _decode_events(contract, receipt) -> list[dict]:
    by_topic = {_hex(contract.events[name].topic): contract.events[name] for name in _event_names(contract)}
    decoded = []
    for log in receipt["logs"]:
        event = by_topic.get(_hex(log["topics"][0])) if log["topics"] else None
        if event is not None and log["address"] == contract.address:
            decoded.append({"event": event.event_name, "args": jsonable(event().process_log(log)["args"])})
    return decoded


def _event_names(contract) -> list[str]:
    return [item["name"] for item in contract.abi if item["type"] == "event"]


def _block(w3, number: int, transactions: list[dict]) -> dict:
    block = w3.eth.get_block(number)
    ours = [tx["hash"] for tx in transactions if tx["block"] == number]
    return {
        "number": number,
        "hash": _hex(block["hash"]),
        "timestamp": block["timestamp"],
        "gas_used": block["gasUsed"],
        "transactions": ours,
    }


def jsonable(value):
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict) or hasattr(value, "items"):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value


def _hex(value) -> str:
    if isinstance(value, str):
        return value if value.startswith("0x") else "0x" + value
    return "0x" + bytes(value).hex()


def write_trail(chain_dir: Path, trail: dict) -> None:
    write_json_atomic(chain_dir / TRAIL_FILE, trail, sort_keys=False)  # decoded arguments in the ABI's order


def read_trail(run_dir: Path) -> dict | None:
    """RUN_DIR's trail; an embedded chain is described by its file in RUN_DIR (the trail names the file the run was
    written in, another directory's once the run is copied or moved)."""
    path = Path(run_dir) / "chain" / TRAIL_FILE
    if not path.is_file():
        return None
    trail = json.loads(path.read_text())
    if trail.get("backend") == "embedded":
        from chain.backends import embedded_description
        from chain.embedded import EMBEDDED_CHAIN_FILE

        trail["chain"] = embedded_description(path.parent / EMBEDDED_CHAIN_FILE)
    return trail
