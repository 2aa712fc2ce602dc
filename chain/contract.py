"""The FLB contract from Python: the committed artifact, digest encoding, and reverts made readable."""

from __future__ import annotations

import ast
import json
import re
from functools import lru_cache
from importlib.resources import files

from chain.errors import ChainError, TransactionReverted

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_TESTER_REVERT = re.compile(r"execution reverted: (b'.*'|b\".*\")", re.S)  # eth-tester: the data's bytes literal
_DECODED = re.compile(r"(\w+)\((.*)\)", re.S)
_BUILTIN_ERRORS = [  # what Solidity itself reverts with: require/revert strings and panics
    {"type": "error", "name": "Error", "inputs": [{"name": "message", "type": "string"}]},
    {"type": "error", "name": "Panic", "inputs": [{"name": "code", "type": "uint256"}]},
]
DEFAULT_FIX = "check the call's arguments against chain/contracts/FLB.sol"
FIXES = {
    "OwnableUnauthorizedAccount": "the sender is not the contract owner; sign with the admin account that owns it",
    "OwnableInvalidOwner": "the owner must be a non-zero address",
    "AlreadyAnchored": "this contract already anchors adapter config {adapterConfigDigest} and run spec "
    "{runSpecDigest}; a run with other settings needs a fresh contract (chain.contract_address: null)",
    "RenounceDisabled": "ownership cannot be renounced; hand it over with transferOwnership + acceptOwnership",
    "ZeroAddress": "the zero address cannot be a client; register the client's account address",
    "AlreadyRegistered": "{client} is already registered; register each client once",
    "NotRegistered": "{client} is not a registered client; the owner registers it with registerClients first",
    "ZeroDigest": "digests and commitments must be non-zero; pass flb.audit.digests or flb.audit.attestation output",
    "AlreadyUploaded": "{client} has already uploaded this data digest; each client records a digest once",
    "BadSignature": "the signature is not {client}'s EIP-712 signature of exactly this record for this contract and "
    "chain; have the client sign it with flb.audit.attestation",
    "WrongRound": "rounds are recorded in order; this contract expects round {expected}",
    "LengthMismatch": "a round needs one update digest, example count, score and signature per client",
    "ClientsNotAscending": "a round's clients must be sorted by address, ascending, each once (index {index} is not)",
    "StalenessWithoutBuffer": "a synchronous run anchors max staleness 0, not {maxStaleness}; anchor buffered rounds "
    "(strategy fedbuff) to allow stale updates",
    "NotBuffered": "this contract's run is synchronous; record its rounds with recordRound",
    "NotSynchronous": "this contract's run is buffered (strategy fedbuff); record its rounds with clients with "
    "recordBufferedRound, each client with its start round",
    "TooStale": "{client}'s update started from round {startRound}, which is not before this round or is more rounds "
    "before the previous one than the anchored maxStaleness; drop updates staler than strategy.fedbuff.max_staleness",
    "StartReused": "{client}'s update started from round {startRound}, not after the start of its update recorded "
    "before: a client's updates are recorded once each, in the order it started them",
}


@lru_cache(maxsize=1)
def load_artifact() -> dict:
    """ABI, bytecode and compiler settings of FLB, as written by `node chain/compile.js`."""
    return json.loads(files("chain.artifacts").joinpath("FLB.json").read_text())


def flb_contract(w3, address: str | None = None):
    artifact = load_artifact()
    if address is None:
        return w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    return w3.eth.contract(address=w3.to_checksum_address(address), abi=artifact["abi"])


def to_bytes32(digest: str, what: str) -> bytes:
    """A sha256 hex digest ('<64 hex>' or 'sha256:<64 hex>') as the contract's bytes32."""
    hex_part = digest.removeprefix("sha256:").removeprefix("0x")
    if not _HEX64.fullmatch(hex_part):
        raise ChainError(
            f"{what}: {digest!r} is not a sha256 hex digest; pass flb.audit.digests.adapter_digest(...) output"
        )
    return bytes.fromhex(hex_part)


def from_bytes32(value: bytes) -> str:
    return bytes(value).hex()


def revert_reason(exc: Exception) -> str | None:
    """The revert in `exc` as 'ErrorName(arg=value, ...)' (a require string as itself), or None when
    `exc` is not a revert. web3 puts the revert data in `exc.data` (anvil, and eth-tester panics);
    eth-tester puts it as a bytes literal in the message of its TransactionFailed."""
    from eth_tester.exceptions import TransactionFailed
    from web3.exceptions import ContractLogicError

    if isinstance(exc, ContractLogicError):
        data = bytes.fromhex((exc.data or "0x").removeprefix("0x")) if isinstance(exc.data, str) else b""
        return decode_revert(data)
    if isinstance(exc, TransactionFailed):
        literal = _TESTER_REVERT.fullmatch(str(exc))
        if literal is None:  # a require string, already decoded by web3's eth-tester provider
            return str(exc).removeprefix("execution reverted: ")
        return decode_revert(ast.literal_eval(literal.group(1)))
    return None


def decode_revert(data: bytes) -> str:
    """Revert data as 'ErrorName(arg=value, ...)', using the errors in FLB's ABI (inherited ones included)."""
    if len(data) < 4:
        return "revert without a reason"
    error = _errors_by_selector().get(data[:4])
    if error is None:
        return f"unknown error 0x{data[:4].hex()} (not in chain/artifacts/FLB.json)"
    from eth_abi import decode

    values = decode([arg["type"] for arg in error["inputs"]], data[4:])
    if error["name"] == "Error":
        return values[0]
    if error["name"] == "Panic":
        return f"Panic(code={values[0]:#04x})"
    shown = ", ".join(f"{arg['name']}={_show(arg['type'], value)}" for arg, value in zip(error["inputs"], values))
    return f"{error['name']}({shown})"


def reverted(action: str, reason: str) -> TransactionReverted:
    """One line: what was attempted, the decoded revert, and how to fix it where the user can."""
    reason = " ".join(reason.split())
    decoded = _DECODED.fullmatch(reason)
    fix = DEFAULT_FIX
    if decoded and decoded.group(1) in FIXES:
        args = dict(pair.split("=", 1) for pair in decoded.group(2).split(", ") if "=" in pair)
        fix = FIXES[decoded.group(1)].format(**args)
    return TransactionReverted(f"{action}: the contract reverted with {reason}; {fix}")


@lru_cache(maxsize=1)
def _errors_by_selector() -> dict:
    from eth_utils import keccak

    errors = [item for item in load_artifact()["abi"] if item["type"] == "error"] + _BUILTIN_ERRORS
    return {keccak(text=f"{e['name']}({','.join(a['type'] for a in e['inputs'])})")[:4]: e for e in errors}


def _show(abi_type: str, value) -> str:
    if abi_type == "address":
        from eth_utils import to_checksum_address

        return to_checksum_address(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)
