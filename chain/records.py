"""Ledger records as outbox payloads, and each payload as the contract call that writes it.

Payloads are plain JSON (the outbox keeps them on disk); the contract wants a round's clients sorted by
address, so `round_payload` sorts them once, keeping every per-client list aligned.
"""
from __future__ import annotations

from chain.contract import to_bytes32
from chain.errors import ChainError
from chain.scoring import round_scores
from flb.types import RoundRecord, SignedUpload

REGISTER, UPLOAD, ROUND = "register", "upload", "round"


def register_payload(addresses: dict[int, str]) -> dict:
    return {"clients": {str(client_id): address for client_id, address in sorted(addresses.items())}}


def upload_payload(client_id: int, address: str, upload: SignedUpload) -> dict:
    to_bytes32(upload.recorded_digest, f"client {client_id} data digest")
    return {"client_id": client_id, "client": address, "data": upload.recorded_digest, "signature": upload.signature}


def round_payload(record: RoundRecord, scoring: str, uploads: dict[int, int]) -> dict:
    """The round as recordRound (or, with a participants commitment, recordSealedRound) will take it."""
    to_bytes32(record.global_digest, f"round {record.round} global digest")
    to_bytes32(record.metrics_digest, f"round {record.round} metrics digest")
    if record.participants_commitment is not None:
        return {"round": record.round, "global_digest": record.global_digest, "metrics_digest": record.metrics_digest,
                "participants_commitment": record.participants_commitment}
    columns = (record.client_ids, record.addresses, record.update_digests, record.num_examples, record.signatures,
               round_scores(record, scoring, uploads))
    if len({len(column) for column in columns}) != 1:
        raise ChainError(f"round {record.round}: the per-client lists of its record differ in length; give one entry "
                         "per accepted client")
    rows = sorted(zip(*columns), key=lambda row: int(row[1], 16))
    for client_id, _, digest, *_ in rows:
        to_bytes32(digest, f"round {record.round} client {client_id} update digest")
    client_ids, addresses, digests, counts, signatures, scores = (list(column) for column in zip(*rows)) if rows else \
        ([], [], [], [], [], [])
    return {"round": record.round, "global_digest": record.global_digest, "metrics_digest": record.metrics_digest,
            "client_ids": client_ids, "clients": addresses, "update_digests": digests, "num_examples": counts,
            "scores": scores, "signatures": signatures}


def call_for(contract, kind: str, payload: dict):
    """The contract function call that writes this record, and a phrase naming it for messages."""
    functions = contract.functions
    if kind == REGISTER:
        return functions.registerClients(list(payload["clients"].values())), "client registration"
    if kind == UPLOAD:
        return (functions.uploadUserData(payload["client"], to_bytes32(payload["data"], "data digest"),
                                         _signature(payload["signature"])),
                f"data upload of client {payload['client_id']}")
    round_number = payload["round"]
    global_digest, metrics_digest = _round_digests(payload)
    if "participants_commitment" in payload:
        return (functions.recordSealedRound(round_number, global_digest, metrics_digest,
                                            to_bytes32(payload["participants_commitment"], "participants commitment")),
                f"round {round_number} record")
    return (functions.recordRound(round_number, global_digest, metrics_digest, payload["clients"],
                                  [to_bytes32(d, "update digest") for d in payload["update_digests"]],
                                  payload["num_examples"], payload["scores"],
                                  [_signature(s) for s in payload["signatures"]]),
            f"round {round_number} record")


def on_chain(contract, kind: str, payload: dict) -> bool | str:
    """True when the chain holds exactly this record, False when it holds nothing in its place, and a reason
    string when it holds something else there (a conflict no resend can fix)."""
    functions = contract.functions
    if kind == REGISTER:
        return all(functions.isClient(address).call() for address in payload["clients"].values())
    if kind == UPLOAD:
        return functions.hasUploaded(payload["client"], to_bytes32(payload["data"], "data digest")).call()
    round_number = payload["round"]
    if not functions.roundExists(round_number).call():
        return False
    previous = _previous_digest(contract, round_number)
    global_digest, metrics_digest = _round_digests(payload)
    if "participants_commitment" in payload:
        same = functions.verifySealedRound(round_number, previous, global_digest, metrics_digest,
                                           to_bytes32(payload["participants_commitment"], "commitment")).call()
    else:
        same = functions.verifyRound(round_number, previous, global_digest, metrics_digest, payload["clients"],
                                     [to_bytes32(d, "update digest") for d in payload["update_digests"]],
                                     payload["num_examples"], payload["scores"]).call()
    return True if same else f"round {round_number} is on chain with another record"


def _round_digests(payload: dict) -> tuple[bytes, bytes]:
    return (to_bytes32(payload["global_digest"], "global digest"),
            to_bytes32(payload["metrics_digest"], "metrics digest"))


def _previous_digest(contract, round_number: int) -> bytes:
    return bytes(32) if round_number == 0 else contract.functions.getRound(round_number - 1).call()[0]


def _signature(signature: str) -> bytes:
    return bytes.fromhex(signature.removeprefix("0x"))
