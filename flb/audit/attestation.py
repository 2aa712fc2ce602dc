"""What a client signs, and how anyone checks it: the EIP-712 typed data of the FLB contract.

A client signs each update it sends (round, the global digest it started from, its update digest,
its example count) and each data shard it uploads, with its own account, for one contract on one
chain (the signing domain). The contract accepts a record only with that signature, so the server
cannot attribute to a client an update it did not send. This module is the one definition of the
typed data: clients sign with it; chain/ and the explorer check with it. Under differential privacy
the chain holds a salted commitment instead of a data digest (`commitment`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from flb.errors import FLBError

DOMAIN_NAME = "FLB"
DOMAIN_VERSION = "5"
SALT_BYTES = 32
SIGNATURE_BYTES = 65
# secp256k1's group order: OpenZeppelin rejects s above half of it, so every signature has one form.
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")

_EIP712_DOMAIN_TYPE = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
_UPDATE_TYPE = [
    {"name": "round", "type": "uint256"},
    {"name": "previousGlobalDigest", "type": "bytes32"},
    {"name": "updateDigest", "type": "bytes32"},
    {"name": "numExamples", "type": "uint256"},
]
_DATA_UPLOAD_TYPE = [{"name": "dataDigest", "type": "bytes32"}]


class AttestationError(FLBError):
    """A signing domain, digest or count given to sign or check is malformed."""


class SignatureError(AttestationError):
    """A signature is not 65 bytes of a valid, canonical secp256k1 signature."""


@dataclass(frozen=True)
class SigningDomain:
    """The contract signatures are for: its chain id and address (checksummed on construction)."""

    chain_id: int
    contract: str

    def __post_init__(self):
        if isinstance(self.chain_id, bool) or not isinstance(self.chain_id, int) or self.chain_id <= 0:
            raise AttestationError(
                f"signing domain chain_id: {self.chain_id!r} is not a positive integer; "
                "pass the chain's id (w3.eth.chain_id)"
            )
        if not isinstance(self.contract, str) or not _ADDRESS.fullmatch(self.contract):
            raise AttestationError(
                f"signing domain contract: {self.contract!r} is not a 0x-prefixed 20-byte address; "
                "pass the FLB contract's address"
            )
        from eth_utils import to_checksum_address

        object.__setattr__(self, "contract", to_checksum_address(self.contract))

    def to_dict(self) -> dict:
        return {"chain_id": self.chain_id, "contract": self.contract}

    @classmethod
    def from_dict(cls, data: dict) -> SigningDomain:
        missing = {"chain_id", "contract"} - set(data)
        if missing:
            raise AttestationError(
                f"signing domain: {sorted(missing)} missing from {data!r}; write it with SigningDomain.to_dict()"
            )
        return cls(chain_id=data["chain_id"], contract=data["contract"])


def sign_update(
    account, domain: SigningDomain, *, round: int, previous_global_digest, update_digest, num_examples: int
) -> str:
    """`account`'s signature (0x-hex, 65 bytes) of one update; the contract's recordRound checks it."""
    message = _update_message(domain, round, previous_global_digest, update_digest, num_examples)
    return _sign(account, message)


def update_signer(
    domain: SigningDomain, *, round: int, previous_global_digest, update_digest, num_examples: int, signature: str
) -> str:
    """The checksum address that signed this update (another address when any field differs)."""
    message = _update_message(domain, round, previous_global_digest, update_digest, num_examples)
    return _recover(message, signature)


def update_hash(domain: SigningDomain, *, round: int, previous_global_digest, update_digest, num_examples: int) -> str:
    """0x-hex EIP-712 digest of an update: what is signed, equal to the contract's updateHash(...)."""
    return _typed_data_hash(_update_message(domain, round, previous_global_digest, update_digest, num_examples))


def sign_data_upload(account, domain: SigningDomain, data_digest) -> str:
    """`account`'s signature (0x-hex, 65 bytes) of a data upload; the contract's uploadUserData checks it."""
    return _sign(account, _data_upload_message(domain, data_digest))


def data_upload_signer(domain: SigningDomain, data_digest, signature: str) -> str:
    """The checksum address that signed this data upload."""
    return _recover(_data_upload_message(domain, data_digest), signature)


def data_upload_hash(domain: SigningDomain, data_digest) -> str:
    """0x-hex EIP-712 digest of a data upload, equal to the contract's dataUploadHash(...)."""
    return _typed_data_hash(_data_upload_message(domain, data_digest))


def domain_separator(domain: SigningDomain) -> str:
    """0x-hex EIP-712 domain separator, equal to the contract's domainSeparator()."""
    any_message = _data_upload_message(domain, bytes(32))  # the header depends on the domain alone
    return "0x" + _encode(any_message).header.hex()


def commitment(salt: bytes, digest) -> str:
    """Hex sha256(salt || digest bytes): binds the owner to `digest` without revealing it (salt kept private)."""
    if not isinstance(salt, bytes) or len(salt) != SALT_BYTES:
        got = f"{len(salt)} bytes" if isinstance(salt, bytes) else type(salt).__name__
        raise AttestationError(
            f"commitment salt: got {got}, need {SALT_BYTES} random bytes; "
            "draw them from the owner's secret generator and keep them"
        )
    return hashlib.sha256(salt + digest_bytes(digest, "committed digest")).hexdigest()


def digest_bytes(digest, what: str) -> bytes:
    """32 bytes from a sha256 digest: '<64 hex>', 'sha256:<64 hex>', '0x<64 hex>', or 32 bytes."""
    if isinstance(digest, bytes) and len(digest) == 32:
        return digest
    hex_part = digest.removeprefix("sha256:").removeprefix("0x") if isinstance(digest, str) else ""
    if not _HEX64.fullmatch(hex_part):
        raise AttestationError(
            f"{what}: {digest!r} is not a sha256 digest (64 hex characters or 32 bytes); pass flb.audit.digests output"
        )
    return bytes.fromhex(hex_part)


def _uint(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**256:
        raise AttestationError(f"{what}: {value!r} is not an integer in [0, 2**256); pass a count or round number")
    return value


def _update_message(domain, round, previous_global_digest, update_digest, num_examples) -> dict:
    return _full_message(
        domain,
        "Update",
        _UPDATE_TYPE,
        {
            "round": _uint(round, "round"),
            "previousGlobalDigest": digest_bytes(previous_global_digest, "previous global digest"),
            "updateDigest": digest_bytes(update_digest, "update digest"),
            "numExamples": _uint(num_examples, "num_examples"),
        },
    )


def _data_upload_message(domain, data_digest) -> dict:
    return _full_message(
        domain, "DataUpload", _DATA_UPLOAD_TYPE, {"dataDigest": digest_bytes(data_digest, "data digest")}
    )


def _full_message(domain: SigningDomain, primary_type: str, fields: list, message: dict) -> dict:
    return {
        "types": {"EIP712Domain": _EIP712_DOMAIN_TYPE, primary_type: fields},
        "primaryType": primary_type,
        "domain": {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": domain.chain_id,
            "verifyingContract": domain.contract,
        },
        "message": message,
    }


def _encode(full_message: dict):
    from eth_account.messages import encode_typed_data

    return encode_typed_data(full_message=full_message)


def _typed_data_hash(full_message: dict) -> str:
    from eth_utils import keccak

    signable = _encode(full_message)
    return "0x" + keccak(b"\x19" + signable.version + signable.header + signable.body).hex()


def _sign(account, full_message: dict) -> str:
    return "0x" + bytes(account.sign_message(_encode(full_message)).signature).hex()


def _recover(full_message: dict, signature: str) -> str:
    from eth_account import Account

    raw = _signature_bytes(signature)
    try:
        return Account.recover_message(_encode(full_message), signature=raw)
    except Exception as exc:  # eth_keys raises several types for points off the curve
        raise SignatureError(
            f"signature {signature!r}: no signer can be recovered ({exc}); "
            "ask the client to sign again with flb.audit.attestation"
        ) from None


def _signature_bytes(signature: str) -> bytes:
    """65 bytes r || s || v, rejected as OpenZeppelin's ECDSA does: v 27 or 28, s in the lower half."""
    hex_part = signature.removeprefix("0x") if isinstance(signature, str) else ""
    if len(hex_part) != 2 * SIGNATURE_BYTES or not re.fullmatch(r"[0-9a-fA-F]*", hex_part):
        raise SignatureError(
            f"signature {signature!r}: not 0x-hex of {SIGNATURE_BYTES} bytes; "
            "pass the string sign_update/sign_data_upload returned"
        )
    raw = bytes.fromhex(hex_part)
    s, v = int.from_bytes(raw[32:64], "big"), raw[64]
    if v not in (27, 28) or not 0 < s <= _SECP256K1_N // 2:
        raise SignatureError(
            f"signature {signature!r}: not canonical (v must be 27 or 28, s in the lower half "
            "of the curve order); sign with flb.audit.attestation"
        )
    return raw
