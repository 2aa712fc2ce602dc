"""The FLB contract from Python: the committed artifact, digest encoding, and reverts made readable."""
from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib.resources import files

from chain.errors import ChainError, TransactionReverted

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_OWNABLE_UNAUTHORIZED = "118cdaa7"  # selector of OwnableUnauthorizedAccount(address)
_KNOWN_REVERTS = {
    "Data already uploaded": "each data digest is recorded once; this shard is already on chain",
    "Round already recorded": "each round is recorded once; use a fresh contract (chain.contract_address: null) for a new run",
    "Length mismatch": "a round needs one update digest and one score per client",
    _OWNABLE_UNAUTHORIZED: "the sender is not the contract owner; sign with the admin account that deployed it",
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
        raise ChainError(f"{what}: {digest!r} is not a sha256 hex digest; pass flb.digests.adapter_digest(...) output")
    return bytes.fromhex(hex_part)


def from_bytes32(value: bytes) -> str:
    return bytes(value).hex()


def revert_reason(exc: Exception) -> str | None:
    """The contract's revert reason in `exc` (web3 or eth-tester), or None when it is not a revert."""
    text = f"{exc} {getattr(exc, 'data', '') or ''}"
    if "revert" not in text.lower() and _OWNABLE_UNAUTHORIZED not in text:
        return None
    if _OWNABLE_UNAUTHORIZED in text or "\\x11\\x8c\\xda\\xa7" in text:
        return "OwnableUnauthorizedAccount"
    for reason in _KNOWN_REVERTS:
        if reason in text:
            return reason
    return text.strip().splitlines()[0]


def reverted(action: str, reason: str) -> TransactionReverted:
    key = _OWNABLE_UNAUTHORIZED if reason == "OwnableUnauthorizedAccount" else reason
    fix = _KNOWN_REVERTS.get(key, "check the call's arguments against chain/contracts/FLB.sol")
    return TransactionReverted(f"{action}: the contract reverted with {reason!r}; {fix}")
