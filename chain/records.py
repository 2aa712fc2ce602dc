"""Ledger records as outbox payloads, and each payload as the contract call that writes it.

Payloads are plain JSON (the outbox keeps them on disk); the contract wants a round's clients sorted by
address, so `round_payload` sorts them once, keeping every per-client list aligned. A buffered (fedbuff) round with
clients also has each client's start round ("start_rounds") and goes to recordBufferedRound. Registrations and data
uploads go in batches (`batches`) that each fit one transaction under the chain's block gas limit.
"""

from __future__ import annotations

from chain.contract import to_bytes32
from chain.errors import ChainError
from chain.scoring import round_scores
from flb.types import RoundRecord, SignedUpload

REGISTER, UPLOAD, ROUND = "register", "upload", "round"
# Upper bounds on the gas one more client adds to a batch (measured: about 47,000 and 99,000; a test checks the
# bounds against the contract), and on what a batch costs besides: the transaction, calldata heads, the loop.
GAS_PER_CLIENT = {REGISTER: 52_000, UPLOAD: 110_000}
GAS_PER_BATCH = 60_000


def batch_size(kind: str, gas_limit: int) -> int:
    """How many clients one REGISTER or UPLOAD transaction may carry so that its gas, with the sender's estimate
    headroom, stays under `gas_limit`."""
    from chain.transact import GAS_HEADROOM

    size = int((gas_limit / GAS_HEADROOM - GAS_PER_BATCH) // GAS_PER_CLIENT[kind])
    if size < 1:
        raise ChainError(
            f"chain.block_gas_limit: {gas_limit:,} gas cannot hold one client's {kind} transaction "
            f"(about {int((GAS_PER_BATCH + GAS_PER_CLIENT[kind]) * GAS_HEADROOM):,}); raise it"
        )
    return size


def batch_gas(kind: str, payload: dict) -> int | None:
    """The gas a REGISTER or UPLOAD batch is sent with (its bound: within the block gas limit it was sized for);
    None for a round record, whose gas is estimated."""
    from chain.transact import GAS_HEADROOM

    if kind == ROUND:
        return None
    count = len(payload["clients"] if kind == REGISTER else payload["uploads"])
    return int((GAS_PER_BATCH + count * GAS_PER_CLIENT[kind]) * GAS_HEADROOM)


def batches(items: dict[int, object], size: int) -> list[tuple[str, dict[int, object]]]:
    """`items` by client id in batches of at most `size`, each named by its first and last client id."""
    ids = sorted(items)
    return [
        (f"{chunk[0]}-{chunk[-1]}", {i: items[i] for i in chunk})
        for chunk in (ids[start : start + size] for start in range(0, len(ids), size))
    ]


def register_payload(addresses: dict[int, str]) -> dict:
    return {"clients": {str(client_id): address for client_id, address in sorted(addresses.items())}}


def upload_payload(uploads: dict[int, tuple[str, SignedUpload]]) -> dict:
    """A batch of data uploads: client id -> (its address, its signed upload)."""
    rows = []
    for client_id, (address, upload) in sorted(uploads.items()):
        to_bytes32(upload.recorded_digest, f"client {client_id} data digest")
        rows.append(
            {"client_id": client_id, "client": address, "data": upload.recorded_digest, "signature": upload.signature}
        )
    return {"uploads": rows}


def round_payload(record: RoundRecord, scoring: str, uploads: dict[int, int]) -> dict:
    """The round as recordRound (with a participants commitment, recordSealedRound; with clients and their start
    rounds, recordBufferedRound) will take it."""
    to_bytes32(record.global_digest, f"round {record.round} global digest")
    to_bytes32(record.metrics_digest, f"round {record.round} metrics digest")
    # a buffered run records its rounds without clients (round 0, skipped rounds) as any run does
    buffered = record.start_rounds is not None and len(record.client_ids) + len(record.start_rounds) > 0
    if record.participants_commitment is not None:
        if buffered:
            raise ChainError(
                f"round {record.round}: a buffered round cannot be sealed (the contract checks each update against "
                "the round it started from); record its participants (chain.record_participants: true)"
            )
        return {
            "round": record.round,
            "global_digest": record.global_digest,
            "metrics_digest": record.metrics_digest,
            "participants_commitment": record.participants_commitment,
        }
    columns = {
        "client_ids": record.client_ids,
        "clients": record.addresses,
        "update_digests": record.update_digests,
        "num_examples": record.num_examples,
        "scores": round_scores(record, scoring, uploads),
        "signatures": record.signatures,
    }
    if buffered:
        columns["start_rounds"] = record.start_rounds
    if len({len(column) for column in columns.values()}) != 1:
        raise ChainError(
            f"round {record.round}: the per-client lists of its record differ in length; give one entry "
            "per accepted client"
        )
    rows = sorted(zip(*columns.values()), key=lambda row: int(row[1], 16))
    for client_id, _, digest, *_ in rows:
        to_bytes32(digest, f"round {record.round} client {client_id} update digest")
    sorted_columns = {key: [row[i] for row in rows] for i, key in enumerate(columns)}
    return {
        "round": record.round,
        "global_digest": record.global_digest,
        "metrics_digest": record.metrics_digest,
        **sorted_columns,
    }


def call_for(contract, kind: str, payload: dict):
    """The contract function call that writes this record, and a phrase naming it for messages."""
    functions = contract.functions
    if kind == REGISTER:
        return (
            functions.registerClients(list(payload["clients"].values())),
            f"registration of {_named([int(i) for i in payload['clients']])}",
        )
    if kind == UPLOAD:
        clients, digests, signatures = _upload_columns(payload)
        return (
            functions.uploadUserData(clients, digests, [_signature(s) for s in signatures]),
            f"data upload of {_named([row['client_id'] for row in payload['uploads']])}",
        )
    round_number = payload["round"]
    global_digest, metrics_digest = _round_digests(payload)
    if "participants_commitment" in payload:
        return (
            functions.recordSealedRound(
                round_number,
                global_digest,
                metrics_digest,
                to_bytes32(payload["participants_commitment"], "participants commitment"),
            ),
            f"round {round_number} record",
        )
    signatures = [_signature(s) for s in payload["signatures"]]
    if "start_rounds" in payload:
        return (
            functions.recordBufferedRound(
                round_number, global_digest, metrics_digest, *_client_columns(payload), signatures
            ),
            f"round {round_number} record",
        )
    return (
        functions.recordRound(round_number, global_digest, metrics_digest, *_client_columns(payload), signatures),
        f"round {round_number} record",
    )


def on_chain(contract, kind: str, payload: dict) -> bool | str:
    """True when the chain holds exactly this record, False when it holds nothing in its place, and a reason
    string when it holds something else there (a conflict no resend can fix)."""
    functions = contract.functions
    if kind == REGISTER:
        return _batch_held(
            functions.countRegistered(list(payload["clients"].values())).call(), len(payload["clients"]), "registration"
        )
    if kind == UPLOAD:
        return _batch_held(
            functions.countUploaded(*_upload_columns(payload)[:2]).call(), len(payload["uploads"]), "data upload"
        )
    round_number = payload["round"]
    if not functions.roundExists(round_number).call():
        return False
    previous = _previous_digest(contract, round_number)
    global_digest, metrics_digest = _round_digests(payload)
    if "participants_commitment" in payload:
        same = functions.verifySealedRound(
            round_number,
            previous,
            global_digest,
            metrics_digest,
            to_bytes32(payload["participants_commitment"], "commitment"),
        ).call()
    else:
        verify = functions.verifyBufferedRound if "start_rounds" in payload else functions.verifyRound
        same = verify(round_number, previous, global_digest, metrics_digest, *_client_columns(payload)).call()
    return True if same else f"round {round_number} is on chain with another record"


def _named(client_ids: list[int]) -> str:
    return f"client {client_ids[0]}" if len(client_ids) == 1 else f"clients {client_ids[0]}-{client_ids[-1]}"


def _batch_held(held: int, total: int, what: str) -> bool | str:
    """A batch is one transaction: on chain whole, not at all, or (written by someone else) in part."""
    if held in (0, total):
        return held == total
    return f"only {held} of the {total} clients of this {what} batch are on chain"


def _upload_columns(payload: dict) -> tuple[list[str], list[bytes], list[str]]:
    rows = payload["uploads"]
    return (
        [r["client"] for r in rows],
        [to_bytes32(r["data"], "data digest") for r in rows],
        [r["signature"] for r in rows],
    )


def _client_columns(payload: dict) -> list[list]:
    """A round's per-client arguments, as recordRound and verifyRound take them (with each client's start round
    after the clients, as recordBufferedRound and verifyBufferedRound do)."""
    starts = [payload["start_rounds"]] if "start_rounds" in payload else []
    return [
        payload["clients"],
        *starts,
        [to_bytes32(d, "update digest") for d in payload["update_digests"]],
        payload["num_examples"],
        payload["scores"],
    ]


def _round_digests(payload: dict) -> tuple[bytes, bytes]:
    return (
        to_bytes32(payload["global_digest"], "global digest"),
        to_bytes32(payload["metrics_digest"], "metrics digest"),
    )


def _previous_digest(contract, round_number: int) -> bytes:
    return bytes(32) if round_number == 0 else contract.functions.getRound(round_number - 1).call()[0]


def _signature(signature: str) -> bytes:
    return bytes.fromhex(signature.removeprefix("0x"))
