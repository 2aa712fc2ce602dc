#!/usr/bin/env python3
"""Reference verifier of an FLB run, written from docs/audit-spec.md alone ("spec" below).

    python examples/audit/verify_run.py --rpc URL --contract ADDR RUN_DIR [--clients FILE]

Reads the contract's events and calldata from a node and the published run directory, and checks spec section 5
(items 1-8, buffered rounds included; item 8 for FedAvg/FedProx and FedBuff with lora_aggregation separate or ffa,
with the int8, nf4 and topk compression of spec 2.7; bf16 is noted, as numpy has no bfloat16). Uses numpy,
safetensors, web3 and its eth-* dependencies and the standard library, nothing of FLB. Prints "MISMATCH ..." per
failed check, "NOTE ..." per item it could not check, then "reference verify: N checks passed, M problems"; exit 1 on
a MISMATCH, 2 on bad input.
"""

import argparse
import hashlib
import json
import struct
import sys
from pathlib import Path

import numpy as np
from eth_abi import decode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address
from safetensors import safe_open
from web3 import Web3

ZERO = "00" * 32
HALF_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141 // 2  # secp256k1 n / 2
DTYPES = ("F32", "F16", "F64", "I64", "I32", "I8", "U8", "BOOL")  # spec 2.1, less BF16: numpy has no bfloat16
EVENTS = (
    "RunAnchored(bytes32 adapterConfigDigest, bytes32 runSpecDigest, bool buffered, uint256 maxStaleness)",  # spec 4
    "ClientRegistered(address indexed client, uint256 round)",
    "DataUpload(address indexed user, bytes32 dataDigest)",
    "ScoreAdd(address indexed user, uint256 indexed round, uint256 score)",
    "RoundRecorded(uint256 indexed round, bytes32 previousGlobalDigest, bytes32 globalDigest, bytes32 "
    "metricsDigest, address[] clients, bytes32[] updateDigests, uint256[] numExamples, uint256[] scores)",
    "BufferedRoundRecorded(uint256 indexed round, bytes32 previousGlobalDigest, bytes32 globalDigest, bytes32 "
    "metricsDigest, address[] clients, uint256[] startRounds, bytes32[] updateDigests, uint256[] numExamples, "
    "uint256[] scores)",
    "RoundSealed(uint256 indexed round, bytes32 previousGlobalDigest, bytes32 globalDigest, bytes32 "
    "metricsDigest, bytes32 participantsCommitment)",
)
MESSAGES = (
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)",  # spec 3
    "Update(uint256 round,bytes32 previousGlobalDigest,bytes32 updateDigest,uint256 numExamples)",
    "DataUpload(bytes32 dataDigest)",
)
RECORD_ROUND = "recordRound(uint256,bytes32,bytes32,address[],bytes32[],uint256[],uint256[],bytes[])"
RECORD_BUFFERED = (
    "recordBufferedRound(uint256,bytes32,bytes32,address[],uint256[],bytes32[],uint256[],uint256[],bytes[])"
)
UPLOAD = "uploadUserData(address[],bytes32[],bytes[])"
RUN_SPEC_KEYS = (
    "mode",
    "seed",
    "num_clients",
    "clients_per_round",
    "strategy",
    "server",
    "client",
    "chain.scoring",
    "chain.record_participants",
    "comm.compression",
    "comm.broadcast_compression",
    "comm.topk_fraction",
    "split.head_layers",
    "split.tail_layers",
    "split.trunk",
    "split.client_parts",
    "split.activation_noise",
    "split.activation_clip",
)  # spec 2.5
NOT_RULES = (
    "server.max_client_failures",
    "server.round_deadline_s",
    "server.min_fit_fraction",
    "client.dp.allow_over_target",
)


class BadInput(Exception):
    """Printed as one 'error: ...' line; exit 2."""


class Report:
    def __init__(self):
        self.passed, self.problems, self.notes = 0, [], []

    def check(self, ok: bool, problem: str) -> bool:
        self.passed += bool(ok)
        if not ok:
            self.problems.append(problem)
        return ok


# --- digests (spec 2) -----------------------------------------------------------------------------


def json_digest(value) -> str:
    """sha256 of canonical JSON (spec, Notation)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise BadInput(f"{path}: not JSON ({e})") from None


def load_tensors(path: Path) -> dict:
    """A safetensors file as {name: numpy array}; a dtype numpy cannot hold (BF16) is refused."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            for name in f.keys():
                if (dtype := f.get_slice(name).get_dtype()) not in DTYPES:
                    raise BadInput(
                        f"{path}: tensor {name} is {dtype}, which numpy cannot hold (it has no bfloat16): "
                        "this reference verifier cannot check it"
                    )
            return {name: f.get_tensor(name) for name in f.keys()}
    except BadInput:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors' own error type
        raise BadInput(f"{path}: not a safetensors file ({e})") from None


def tensors_digest(tensors: dict) -> str:
    """Spec 2.1: for each tensor by name, u64le(len(H)) || H || u64le(len(D)) || D. numpy's dtype names are the
    torch names of the DTYPES."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        header = json.dumps([name, array.dtype.name, list(array.shape)]).encode("utf-8")
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        h.update(struct.pack("<Q", len(header)) + header + struct.pack("<Q", len(data)) + data)
    return h.hexdigest()


def adapter_config_digest(path: Path) -> str:
    """Spec 2.2: every top-level list of strings sorted, then the canonical JSON digest."""
    return json_digest(
        {
            k: sorted(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else v
            for k, v in read_json(path).items()
        }
    )


def run_spec(config: dict) -> dict:
    """Spec 2.5: RUN_SPEC_KEYS of config.json (each whole when present, nested as there) less NOT_RULES."""

    def parent(tree, parts, create=False):
        for part in parts:
            tree = tree.setdefault(part, {}) if create else tree.get(part) if isinstance(tree, dict) else None
        return tree

    spec = {}
    for *parts, leaf in (key.split(".") for key in RUN_SPEC_KEYS):
        if isinstance(source := parent(config, parts), dict) and leaf in source:
            parent(spec, parts, create=True)[leaf] = json.loads(json.dumps(source[leaf]))  # a copy
    for *parts, leaf in (key.split(".") for key in NOT_RULES):
        if isinstance(target := parent(spec, parts), dict):
            target.pop(leaf, None)
    return spec


# --- the chain (spec 3, 4) ------------------------------------------------------------------------


def parse_signature(text: str) -> tuple:
    """'Name(type [indexed] name, ...)' -> (Name, [(type, name, indexed)], keccak of 'Name(type,...)': topic 0)."""
    name, params = text[:-1].split("(", 1)
    fields = [(p.split()[0], p.split()[-1], "indexed" in p.split()) for p in params.split(",")]
    return name, fields, keccak(text=f"{name}({','.join(t for t, _, _ in fields)})")


def plain(value):
    """A decoded ABI value with addresses checksummed, bytes as hex and arrays as lists."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return value.hex() if isinstance(value, bytes) else to_checksum_address(value) if isinstance(value, str) else value


def read_chain(rpc: str, contract: str) -> dict:
    """The contract's events from block 0 in chain order, decoded by the signatures of spec 4."""
    w3 = Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": 30}))
    try:
        chain_id = w3.eth.chain_id
    except Exception as e:  # noqa: BLE001 - whatever keeps the node from answering is bad input
        raise BadInput(f"cannot reach the node at {rpc} ({type(e).__name__})") from None
    try:
        contract = to_checksum_address(contract)
    except ValueError:
        raise BadInput(f"--contract {contract} is not an address") from None
    if not w3.eth.get_code(contract):
        raise BadInput(f"no contract at {contract} on the node at {rpc} (chain id {chain_id})")
    kinds = {topic: (name, fields) for name, fields, topic in map(parse_signature, EVENTS)}
    events = []
    for log in w3.eth.get_logs({"address": contract, "fromBlock": 0, "toBlock": "latest"}):
        if not log["topics"] or bytes(log["topics"][0]) not in kinds:
            continue
        name, fields = kinds[bytes(log["topics"][0])]
        topics = iter(log["topics"][1:])
        data = iter(decode([t for t, _, indexed in fields if not indexed], bytes(log["data"])))
        args = {n: plain(decode([t], bytes(next(topics)))[0] if indexed else next(data)) for t, n, indexed in fields}
        events.append({"event": name, "args": args, "tx": log["transactionHash"]})
    return {"w3": w3, "chain_id": chain_id, "contract": contract, "events": events}


def calldata(chain: dict, tx_hash, function: str):
    """The arguments of the transaction when it is a direct call of `function` to the contract, else None."""
    tx = chain["w3"].eth.get_transaction(tx_hash)
    if tx["to"] != chain["contract"] or bytes(tx["input"])[:4] != keccak(text=function)[:4]:
        return None
    return decode(function[function.index("(") + 1 : -1].split(","), bytes(tx["input"])[4:])


def recover(chain: dict, primary: str, message: dict, signature: bytes):
    """Spec 3: the EIP-712 signer of `message` (bytes32 fields as hex), or None for a malformed signature."""
    if len(signature) != 65 or signature[64] not in (27, 28) or int.from_bytes(signature[32:64], "big") > HALF_ORDER:
        return None
    types = {name: [{"name": n, "type": t} for t, n, _ in fields] for name, fields, _ in map(parse_signature, MESSAGES)}
    domain = {"name": "FLB", "version": "5", "chainId": chain["chain_id"], "verifyingContract": chain["contract"]}
    full = {
        "types": {"EIP712Domain": types["EIP712Domain"], primary: types[primary]},
        "primaryType": primary,
        "domain": domain,
        "message": {k: bytes.fromhex(v) if isinstance(v, str) else v for k, v in message.items()},
    }
    return Account.recover_message(encode_typed_data(full_message=full), signature=signature)


def rounds_of(chain: dict) -> dict:
    """round -> its RoundRecorded / BufferedRoundRecorded / RoundSealed arguments, with `sealed`, `buffered`, its
    transaction and its event position."""
    return {
        e["args"]["round"]: {
            "clients": [],
            "updateDigests": [],
            "numExamples": [],
            "scores": [],
            **e["args"],
            "sealed": e["event"] == "RoundSealed",
            "buffered": e["event"] == "BufferedRoundRecorded",
            "tx": e["tx"],
            "position": position,
        }
        for position, e in enumerate(chain["events"])
        if e["event"] in ("RoundRecorded", "BufferedRoundRecorded", "RoundSealed")
    }


def starts_of(n: int, r: dict) -> list:
    """Spec 3: the round each update of round n started from (n - 1 in a synchronous round)."""
    return r["startRounds"] if r["buffered"] else [n - 1] * len(r["clients"])


def client_ids(run_dir: Path, registered: list) -> dict:
    """Spec 1: each registered address -> its client id, as the run's chain/accounts.json lists it (`ids` beside
    `clients`), or without `ids` its 0-based position among the ClientRegistered events."""
    path = run_dir / "chain" / "accounts.json"
    accounts = json.loads(path.read_text()) if path.is_file() else {}
    listed = dict(zip(accounts.get("clients", []), accounts["ids"])) if "ids" in accounts else {}
    return {address: listed.get(address) if listed else i for i, address in enumerate(registered)}


def client_id(clients: dict, address: str):
    """The client id of a registered address (spec 1), or the address itself."""
    return address if clients.get(address) is None else clients[address]


def update_file(run_dir: Path, n: int, address: str, clients: dict) -> Path:
    return run_dir / f"round_{n}" / "updates" / f"client_{client_id(clients, address)}.safetensors"


# --- checks (spec 5) ------------------------------------------------------------------------------


def check_anchors(report: Report, chain: dict, run_dir: Path, rounds: dict):
    """Items 1 and 2: exactly one RunAnchored; config.json's run spec (2.5) and every adapter_config.json (2.2)
    against it. Returns config.json when its rules are the anchored ones, else None (nothing is read from it)."""
    report.notes.append(
        "the contract's deployment code was not compared with chain/artifacts/FLB.json (the project's "
        "artifact, which this reference verifier does not read): obtain the address out of band"
    )
    anchors = [e["args"] for e in chain["events"] if e["event"] == "RunAnchored"]
    if not report.check(len(anchors) == 1, f"contract {chain['contract']}: {len(anchors)} RunAnchored events, not 1"):
        return None
    config, anchored = None, anchors[0]
    if not (run_dir / "config.json").is_file():
        report.problems.append("config.json is missing: the run's rules cannot be checked")
    else:
        loaded = read_json(run_dir / "config.json")
        actual = json_digest(run_spec(loaded))
        if report.check(
            actual == anchored["runSpecDigest"],
            f"config.json: its run spec has digest {actual}, but the chain anchors {anchored['runSpecDigest']}",
        ):
            config = loaded
    finished = ["final_adapter"] if (run_dir / "final_adapter").is_dir() else []
    for folder in [f"round_{n}" for n in sorted(rounds)] + finished:
        if not (path := run_dir / folder / "adapter_config.json").is_file():
            report.problems.append(f"{folder}/adapter_config.json is missing")
        else:
            report.check(
                (actual := adapter_config_digest(path)) == anchored["adapterConfigDigest"],
                f"{folder}/adapter_config.json has digest {actual}, but the chain anchors "
                f"{anchored['adapterConfigDigest']}",
            )
    return config


def check_participants(report: Report, chain: dict, trusted) -> list:
    """Item 3: each ClientRegistered address is in --clients or, without it, registered at round 0. Returns the
    registered addresses in chain order."""
    registered = [e["args"] for e in chain["events"] if e["event"] == "ClientRegistered"]
    for e in registered:
        if trusted is not None:
            report.check(e["client"].lower() in trusted, f"participant {e['client']} is registered, not in --clients")
        else:
            report.check(
                e["round"] == 0,
                f"participant {e['client']} was registered at round {e['round']}, after the "
                "run began (pass --clients FILE to accept it)",
            )
    return [e["client"] for e in registered]


def check_chain_of_rounds(report: Report, rounds: dict) -> None:
    """Item 4: rounds 0..N, each chained to the previous globalDigest; one after 0 with no clients keeps it."""
    numbers = sorted(rounds)
    report.check(numbers == list(range(len(numbers))), f"rounds on chain are {numbers}, not 0..{len(numbers) - 1}")
    for n, r in sorted(rounds.items()):
        expected = ZERO if n == 0 else rounds.get(n - 1, {}).get("globalDigest")
        report.check(
            r["previousGlobalDigest"] == expected,
            f"round {n}: previousGlobalDigest {r['previousGlobalDigest']} is not round {n - 1}'s {expected}",
        )
        if n > 0 and not r["sealed"] and not r["clients"]:
            report.check(
                r["globalDigest"] == r["previousGlobalDigest"],
                f"round {n}: no clients, but a new globalDigest {r['globalDigest']}",
            )


def check_buffered(report: Report, chain: dict, rounds: dict, config) -> None:
    """Items 2 and 4 for buffered runs: the anchored buffered/maxStaleness are config.json's (strategy fedbuff and its
    max_staleness; any other strategy: not buffered, 0); each round with clients is of the anchored kind; in a
    buffered run every update started 0..maxStaleness rounds before round n - 1, and each client's starts increase."""
    anchors = [e["args"] for e in chain["events"] if e["event"] == "RunAnchored"]
    if len(anchors) != 1:
        return  # item 1's problem
    buffered, most = anchors[0]["buffered"], anchors[0]["maxStaleness"]
    if config is not None:
        strategy = config["strategy"]
        fedbuff = strategy["name"] == "fedbuff"
        expected = (fedbuff, strategy["fedbuff"]["max_staleness"] if fedbuff else 0)
        report.check(
            (buffered, most) == expected,
            f"config.json: strategy {strategy['name']} gives (buffered, maxStaleness) {expected}, but the chain "
            f"anchors {(buffered, most)}",
        )
    last = {}
    for n, r in sorted((n, r) for n, r in rounds.items() if r["clients"] and not r["sealed"]):
        if not report.check(r["buffered"] == buffered, f"round {n}: buffered {r['buffered']}, anchored {buffered}"):
            continue
        for address, s in zip(r["clients"], starts_of(n, r)):
            report.check(
                0 <= n - 1 - s <= most,
                f"round {n} client {address}: start round {s}, staleness {n - 1 - s} outside 0..{most}",
            )
            report.check(
                s > last.get(address, -1),
                f"round {n} client {address}: start round {s} is not after its last ({last.get(address)})",
            )
            last[address] = s


def check_file(report: Report, run_dir: Path, path: Path, expected: str, who: str, committed=False) -> None:
    """A safetensors file's digest (2.1) against the chain's. Where the chain may hold a salted commitment
    (numExamples 0, spec 2.4) a different digest is a NOTE: only the owner's opening can check it."""
    name = path.relative_to(run_dir)
    if not path.is_file():
        report.problems.append(f"{who}: {name} is missing; the chain holds {expected}")
    elif (actual := tensors_digest(load_tensors(path))) != expected and committed:
        report.notes.append(
            f"{who}: {name} has digest {actual}; the chain holds {expected}, maybe a salted "
            "commitment (numExamples 0) that only the client's opening can check"
        )
    else:
        report.check(actual == expected, f"{who}: {name} has digest {actual}, but the chain holds {expected}")


def check_files(report: Report, run_dir: Path, rounds: dict, clients: dict) -> None:
    """Item 5: global adapters, update files, final_adapter/, metrics.jsonl and summary.json."""
    for n, r in sorted(rounds.items()):
        check_file(
            report,
            run_dir,
            run_dir / f"round_{n}" / "adapter_model.safetensors",
            r["globalDigest"],
            f"round {n} global adapter",
        )
        if r["sealed"]:
            report.notes.append(f"round {n}: sealed (spec 5.3): its updates are checked only with the server's opening")
        for address, digest, count in zip(r["clients"], r["updateDigests"], r["numExamples"]):
            check_file(
                report,
                run_dir,
                update_file(run_dir, n, address, clients),
                digest,
                f"round {n} client {client_id(clients, address)}",
                committed=count == 0,
            )
    if rounds and (run_dir / "final_adapter").is_dir():
        check_file(
            report,
            run_dir,
            run_dir / "final_adapter" / "adapter_model.safetensors",
            rounds[max(rounds)]["globalDigest"],
            "final_adapter",
        )
    elif rounds:
        report.notes.append("final_adapter/ is missing (an unfinished run): not checked")
    rows = check_metrics(report, run_dir, rounds)
    if rounds:
        check_summary(report, run_dir, rounds, rows)


def check_metrics(report: Report, run_dir: Path, rounds: dict):
    """Item 5 and 2.6: one round line per recorded round, with its globalDigest and metricsDigest. Returns the
    round lines in order when every one matches, else None."""
    if not (path := run_dir / "metrics.jsonl").is_file():
        report.problems.append("metrics.jsonl is missing")
        return None
    try:
        lines = [
            row
            for row in map(json.loads, filter(str.strip, path.read_text().splitlines()))
            if row.get("kind") == "round"
        ]
    except (ValueError, AttributeError):
        raise BadInput(f"{path}: not one JSON object a line") from None
    rows, ok = [], True
    for n in sorted(set(rounds) | {row["round"] for row in lines if isinstance(row.get("round"), int)}):
        found = [row for row in lines if row.get("round") == n]
        recorded = "records" if n in rounds else "does not record"
        if not report.check(
            n in rounds and len(found) == 1,
            f"metrics.jsonl: {len(found)} round lines for round {n}, which the chain {recorded}",
        ):
            ok = False
            continue
        row, r, actual = found[0], rounds[n], json_digest(found[0])
        ok &= report.check(
            row.get("global_digest") == r["globalDigest"],
            f"metrics.jsonl: round {n} global_digest {row.get('global_digest')} is not the chain's",
        )
        ok &= report.check(
            actual == r["metricsDigest"],
            f"metrics.jsonl: round {n} line has digest {actual}, but the "
            f"chain holds metricsDigest {r['metricsDigest']}",
        )
        rows.append(row)
    return rows if ok else None


def check_summary(report: Report, run_dir: Path, rounds: dict, rows) -> None:
    """Item 5: summary.json's final_digest, and its numbers as derived from the checked round lines."""
    if not (path := run_dir / "summary.json").is_file():
        report.problems.append("summary.json is missing")
        return
    summary, last = read_json(path), rounds[max(rounds)]["globalDigest"]
    report.check(
        summary.get("final_digest") == last,
        f"summary.json: final_digest {summary.get('final_digest')} is not the last globalDigest {last}",
    )
    if rows is None:
        report.notes.append("summary.json: numbers not compared (not every round line matches the chain)")
        return
    done = [row for row in rows if not row.get("skipped")]  # round 0 and the rounds that aggregated
    expected = {
        "rounds": max(rounds),
        "rounds_aggregated": len(done) - 1,
        **{key: {"round_0": done[0].get(key), "final": done[-1].get(key)} for key in ("eval_loss", "accuracy")},
        "comm": {
            "down_bytes": rows[-1].get("comm_total_down_bytes", 0),
            "up_bytes": rows[-1].get("comm_total_up_bytes", 0),
        },
    }
    if "privacy" in rows[-1]:
        expected["privacy"] = rows[-1]["privacy"]
        expected["over_target_allowed"] = any(
            c.get("over_target_allowed") for c in rows[-1]["privacy"].get("clients", {}).values()
        )
    for key, value in expected.items():
        report.check(
            summary.get(key) == value,
            f"summary.json: {key} is {summary.get(key)!r}, but the round lines give {value!r}",
        )
    if "suites" in summary:
        report.notes.append("summary.json: suites not compared (the spec does not define a suite's headline number)")


def check_signatures(report: Report, chain: dict, rounds: dict, clients: dict) -> None:
    """Item 6: each recorded update (recordRound calldata) and data upload (uploadUserData calldata) recovers
    (spec 3) to its registered client."""
    for n, r in sorted((n, r) for n, r in rounds.items() if r["clients"]):
        function = RECORD_BUFFERED if r["buffered"] else RECORD_ROUND
        if (args := calldata(chain, r["tx"], function)) is None or args[0] != n:
            report.notes.append(
                f"round {n}: not recorded by a direct {function[: function.index('(')]} call: signatures not checked"
            )
            continue
        signatures = args[-1]
        for k, (address, digest, count, s) in enumerate(
            zip(r["clients"], r["updateDigests"], r["numExamples"], starts_of(n, r))
        ):
            started = rounds.get(s, {}).get("globalDigest") if r["buffered"] else r["previousGlobalDigest"]
            message = {"round": s + 1, "previousGlobalDigest": started, "updateDigest": digest, "numExamples": count}
            signer = (
                recover(chain, "Update", message, bytes(signatures[k])) if k < len(signatures) and started else None
            )
            report.check(
                signer == address and address in clients,
                f"round {n} client {client_id(clients, address)}: the update is signed by {signer}, not by it",
            )
    for e in (e for e in chain["events"] if e["event"] == "DataUpload"):
        if (args := calldata(chain, e["tx"], UPLOAD)) is None:
            report.notes.append(f"data upload of {e['args']['user']}: not a direct uploadUserData call: not checked")
            continue
        digest = e["args"]["dataDigest"]
        signature = next(
            (
                bytes(sig)
                for client, data, sig in zip(*args)
                if to_checksum_address(client) == e["args"]["user"] and bytes(data).hex() == digest
            ),
            b"",
        )
        signer = recover(chain, "DataUpload", {"dataDigest": digest}, signature)
        report.check(
            signer == e["args"]["user"] and signer in clients,
            f"data upload of {e['args']['user']}: signed by {signer}, not by that registered client",
        )


def check_scores(report: Report, chain: dict, run_dir: Path, rounds: dict, clients: dict, config) -> None:
    """Item 7: by the anchored chain.scoring, flb scores re-derived as U * B + n; quality ones noted."""
    scored = {n: r for n, r in sorted(rounds.items()) if r["clients"]}
    if scored and (scoring := (config or {}).get("chain", {}).get("scoring")) != "flb":
        report.notes.append(
            "scores: not re-derived ("
            + (
                "config.json is not the anchored run spec)"
                if config is None
                else f"chain.scoring {scoring}: leave-one-out eval-loss gains on the server's evaluation "
                "data, server-asserted)"
            )
        )
        return
    for n, r in scored.items():
        uploads = [e["args"]["user"] for e in chain["events"][: r["position"]] if e["event"] == "DataUpload"]
        for address, count, score in zip(r["clients"], r["numExamples"], r["scores"]):
            if (path := update_file(run_dir, n, address, clients)).is_file():  # a missing file is a mismatch of its own
                size = sum(a.nbytes for name, a in load_tensors(path).items() if not name.startswith("extras/"))
                expected = uploads.count(address) * size + count
                report.check(
                    score == expected,
                    f"round {n} client {client_id(clients, address)}: score {score} on "
                    f"chain, but the flb formula gives {expected} ({path.name})",
                )


def fedavg(updates: list) -> dict:
    """Spec 5.1 on [(tensors, weight)] in chain order: for each tensor of the first update (not extras/), itself when
    every update's is bitwise equal, else the float64 weighted mean rounded once to the tensor's dtype."""
    total, result = np.float64(sum(w for _, w in updates)), {}
    for name, first in ((n, t) for n, t in updates[0][0].items() if not n.startswith("extras/")):
        if all(t[name].dtype == first.dtype and t[name].tobytes() == first.tobytes() for t, _ in updates):
            result[name] = first
            continue
        acc = np.zeros(first.shape, np.float64)
        for tensors, w in updates:
            acc = acc + tensors[name].astype(np.float64) * (np.float64(w) / total)
        result[name] = acc.astype(first.dtype)
    return result


# --- compressed updates and broadcasts (spec 2.7) --------------------------------------------------------------

BLOCK = 64
NF4 = np.array(
    [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
     -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
     0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0],
    np.float32,
)  # fmt: skip


def blocks(flat: np.ndarray) -> np.ndarray:
    """`flat` zero-padded to whole blocks of 64, a block a row."""
    return np.pad(flat, (0, -flat.size % BLOCK)).reshape(-1, BLOCK)


def decoded(codec: str, parts: dict, name: str, like: np.ndarray) -> np.ndarray:
    """Spec 2.7: tensor `name` (shaped like `like`) from its parts in a payload."""
    n = like.size
    if codec == "int8":
        codes = blocks(parts[name + "#int8"].astype(np.float64))
        values = codes * parts[name + "#absmax"].astype(np.float64)[:, None] / 127
    elif codec == "nf4":
        packed = parts[name + "#nf4"]
        codes = np.stack([packed >> 4, packed & 0xF], axis=1).reshape(-1)[:n]
        values = blocks(NF4[codes]) * parts[name + "#absmax"][:, None]
    else:  # topk
        values = np.zeros(n, np.float32)
        values[parts[name + "#indices"].astype(np.int64)] = parts[name + "#values"]
    return values.reshape(-1)[:n].astype(np.float32).reshape(like.shape)


def encoded(codec: str, x: np.ndarray, name: str) -> dict:
    """Spec 2.7's int8 or nf4 encoding of tensor `name` (float32): its parts."""
    rows = blocks(x.reshape(-1).astype(np.float32))
    absmax = np.abs(rows).max(axis=1)
    scaled = rows / np.where(absmax > 0, absmax, np.float32(1))[:, None]
    if codec == "int8":
        codes = np.rint(scaled * np.float32(127)).reshape(-1)[: x.size].astype(np.int8)  # int8: no -0
        return {name + "#absmax": absmax, name + "#int8": codes}
    codes = np.abs(scaled.reshape(-1)[: 2 * -(-x.size // 2), None] - NF4).argmin(axis=1).astype(np.uint8)
    return {name + "#absmax": absmax, name + "#nf4": (codes[0::2] << 4) | codes[1::2]}


def opened(codec: str, sent: dict, previous: dict) -> dict:
    """An update file's tensors (not extras/) as the adapter they stand for: as they are under codec none, else the
    previous global adapter plus their decoding."""
    if codec == "none":
        return sent
    return {name: previous[name] + decoded(codec, sent, name, previous[name]) for name in previous}


def as_broadcast(codec: str, aggregate: dict) -> dict:
    """The global adapter the clients receive: the aggregate encoded and decoded (codec int8 or nf4), or itself."""
    if codec == "none":
        return aggregate
    return {name: decoded(codec, encoded(codec, x, name), name, x) for name, x in aggregate.items()}


def fedbuff(previous: dict, updates: list, settings: dict) -> dict:
    """Spec 5.5 on [(x_k, b_k, w_k, tau_k)] in chain order (x_k opened from its base b_k): g + the staleness-weighted
    change, c_k = ((eta * w_k) * s(tau_k)) / W in Python floats, accumulated in float64 and rounded once."""
    eta, exponent = settings["server_learning_rate"], settings["staleness_exponent"]

    def weight(tau: int) -> float:
        return 1.0 if settings["staleness"] == "constant" else (1.0 + tau) ** -exponent

    total = float(sum(w for _, _, w, _ in updates))
    coefficients = [eta * w * weight(tau) / total for _, _, w, tau in updates]
    result = {}
    for name, current in ((n, t) for n, t in previous.items() if not n.startswith("extras/")):
        acc = np.zeros(current.shape, np.float64)
        for (x, base, _, _), c in zip(updates, coefficients):
            acc = acc + (x[name].astype(np.float64) - base[name].astype(np.float64)) * c
        result[name] = (current.astype(np.float64) + acc).astype(current.dtype)
    return result


def not_recomputed(config) -> str | None:
    """Why this reference verifier does not recompute the run's aggregates (spec 5.2, 5.3), or None."""
    if config is None:
        return "config.json is not the anchored run spec"
    name, mode = config["strategy"].get("name"), config["strategy"].get("lora_aggregation", "separate")
    if config.get("mode") == "split":
        return "split mode: the trunk is trained on the server from hidden states"
    if str(name).startswith("dp_"):
        return f"server DP ({name}): the server's Gaussian noise is drawn from its secret generator"
    if name not in ("fedavg", "fedprox", "fedbuff") or mode not in ("separate", "ffa"):
        return f"{name}, lora_aggregation {mode}: not recomputed by this reference verifier (spec 5.2)"
    comm = config.get("comm", {})
    if "bf16" in (comm.get("compression"), comm.get("broadcast_compression")):
        return "comm bf16: numpy has no bfloat16, so this reference verifier cannot decode it"
    return None


def recompute(report: Report, run_dir: Path, rounds: dict, clients: dict, config) -> None:
    """Item 8: every round with clients, from its update files and recorded numExamples (all 0 under DP: equal
    weights), must give the recorded globalDigest bit for bit."""
    reason = not_recomputed(config)
    for n, r in sorted(rounds.items()):
        paths = [update_file(run_dir, n, address, clients) for address in r["clients"]]
        starts = starts_of(n, r)
        adapters = {s: run_dir / f"round_{s}" / "adapter_model.safetensors" for s in {n - 1, *starts}}
        if r["sealed"] or (reason and paths):
            report.notes.append(f"round {n}: not recomputed ({reason or 'sealed: who took part is a commitment'})")
        elif paths and not all(p.is_file() for p in [*paths, *adapters.values()]):
            report.notes.append(f"round {n}: not recomputed (an update file or a global adapter is missing)")
        elif paths:
            weights = r["numExamples"] if any(r["numExamples"]) else [1] * len(paths)
            comm = {"compression": "none", "broadcast_compression": "none", **config.get("comm", {})}
            recorded = {s: load_tensors(path) for s, path in adapters.items()}  # each checked by item 5
            sent = [load_tensors(p) for p in paths]
            if config["strategy"]["name"] == "fedbuff":
                updates = [
                    (opened(comm["compression"], x, recorded[s]), recorded[s], w, n - 1 - s)
                    for x, w, s in zip(sent, weights, starts)
                ]
                aggregate = fedbuff(recorded[n - 1], updates, config["strategy"]["fedbuff"])
            else:  # a tensor no update holds (fedsa's LoRA B, kept by each client) keeps its value (spec 5.1)
                aggregate = recorded[n - 1] | fedavg(
                    [(opened(comm["compression"], x, recorded[n - 1]), w) for x, w in zip(sent, weights)]
                )
            actual = tensors_digest(as_broadcast(comm["broadcast_compression"], aggregate))
            report.check(
                actual == r["globalDigest"],
                f"round {n}: {config['strategy']['name']} of the round's update "
                f"files has digest {actual}, but the chain records "
                f"globalDigest {r['globalDigest']}",
            )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    parser.add_argument("--rpc", required=True, help="JSON-RPC URL of a node you trust")
    parser.add_argument("--contract", required=True, help="the FLB contract's address, obtained out of band")
    parser.add_argument("--clients", type=Path, help="the real participants' addresses, one 0x address a line")
    args, report = parser.parse_args(argv), Report()
    try:
        if not args.run_dir.is_dir():
            raise BadInput(f"{args.run_dir} is not a run directory")
        if args.clients is not None and not args.clients.is_file():
            raise BadInput(f"--clients {args.clients}: no such file")
        trusted = (
            None
            if args.clients is None
            else {line.strip().lower() for line in args.clients.read_text().splitlines() if line.strip()}
        )
        chain = read_chain(args.rpc, args.contract)
        rounds = rounds_of(chain)
        config = check_anchors(report, chain, args.run_dir, rounds)
        clients = client_ids(args.run_dir, check_participants(report, chain, trusted))
        check_chain_of_rounds(report, rounds)
        check_buffered(report, chain, rounds, config)
        check_files(report, args.run_dir, rounds, clients)
        check_signatures(report, chain, rounds, clients)
        check_scores(report, chain, args.run_dir, rounds, clients, config)
        recompute(report, args.run_dir, rounds, clients, config)
    except BadInput as e:
        print(f"error: {e}")
        return 2
    print(
        "\n".join(
            [f"MISMATCH {p}" for p in report.problems]
            + [f"NOTE {n}" for n in report.notes]
            + [f"reference verify: {report.passed} checks passed, {len(report.problems)} problems"]
        )
    )
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
