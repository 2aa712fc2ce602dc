"""Gas and wall time of the audit trail by number of clients, on the embedded EVM and on anvil.

    python -m bench.chain_cost [--rounds 3] [--clients 2 8 32] [--backends embedded anvil]

As in a run: the owner registers every client and relays their signed data uploads (in batches that fit a block:
one transaction each at these sizes), records round 0 (the base adapter, no clients), then each round is ONE owner
transaction carrying every client's EIP-712 signature of its update, checked on chain. Clients sign with their own
random keys (registered with register_clients); signing is the clients' work, reported apart from the round's wall time.
Per backend and client count it reports: gas of round 0, of the first round with clients and of the later rounds
(steady state; a client's upload already created its score record, so the first round costs what later ones do),
gas per client (amortized: steady / clients; marginal: the slope between client counts), transactions per round
(target: 1), upload and registration gas, wall time from record_round to confirmation. Prints JSON; exits 1 when a
round took more than one transaction or a backend could not be measured."""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from chain.deployment import RunAnchors
from chain.errors import ChainError
from chain.ledger import open_ledger
from flb.audit.attestation import sign_data_upload, sign_update
from flb.config import ChainSettings
from flb.types import RoundRecord, SignedUpload

ANCHORS = RunAnchors("c0" * 32, "c1" * 32)  # any non-zero digests will do here
UPDATE_BYTES = 2_000_000  # a LoRA update of ~0.5 M float32 parameters: only its score depends on it
TXS_PER_ROUND_TARGET = 1


def client_keys(num_clients: int) -> list:
    """Deterministic stand-ins for the clients' own keys (never funded: the admin relays and pays)."""
    from eth_account import Account

    return [Account.from_key(hashlib.sha256(f"flb bench client {i}".encode()).digest()) for i in range(num_clients)]


def global_digest(number: int) -> str:
    return f"{0xA0 + number:064x}"


def signed_round(domain, keys: list, number: int) -> tuple[RoundRecord, float]:
    """Round `number` with every client's update signed by the client, and the seconds the signing took."""
    ids = list(range(len(keys)))
    previous = global_digest(number - 1) if number else "00" * 32
    digests = [f"{number + 1:032x}{i + 1:032x}" for i in ids] if number else []
    counts = [64] * len(digests)
    started = time.perf_counter()
    signatures = [
        sign_update(keys[i], domain, round=number, previous_global_digest=previous, update_digest=d, num_examples=n)
        for i, d, n in zip(ids, digests, counts)
    ]
    signing_s = time.perf_counter() - started
    clients = ids if number else []
    return RoundRecord(
        round=number,
        previous_global_digest=previous if number else None,
        global_digest=global_digest(number),
        client_ids=clients,
        addresses=[keys[i].address for i in clients],
        update_digests=digests,
        num_examples=counts,
        signatures=signatures,
        update_num_bytes=[UPDATE_BYTES] * len(clients),
        metrics={},
        metrics_digest=hashlib.sha256(b"metrics %d" % number).hexdigest(),
    ), signing_s


def measure(backend: str, num_clients: int, rounds: int) -> dict:
    keys = client_keys(num_clients)
    with tempfile.TemporaryDirectory() as run_dir:
        ledger = open_ledger(ChainSettings(backend=backend), Path(run_dir), ANCHORS)
        try:
            domain = ledger.signing_domain
            ledger.register_clients({i: key.address for i, key in enumerate(keys)})
            ledger.record_data_uploads(
                {
                    i: SignedUpload(f"{i + 1:064x}", sign_data_upload(key, domain, f"{i + 1:064x}"))
                    for i, key in enumerate(keys)
                }
            )
            gas, wall, txs, signing = [], [], [], []
            for number in range(rounds + 1):
                record, signing_s = signed_round(domain, keys, number)
                started = time.perf_counter()
                ledger.record_round(record)
                if not ledger.wait_until_sent(600):
                    raise ChainError(f"round {number} not confirmed: {ledger.sender.fatal_error}")
                wall.append(time.perf_counter() - started)
                entry = ledger.outbox.get(f"round:{number}")
                gas.append(entry.gas_used)
                txs.append(entry.history.count("submitted"))
                signing.append(signing_s)
            uploads = sum(e.gas_used for e in ledger.outbox.entries() if e.kind == "upload")
            registration = sum(e.gas_used for e in ledger.outbox.entries() if e.kind == "register")
        finally:
            problem = ledger.close()
        if problem:
            raise ChainError(problem)
    steady = statistics.mean(gas[2:])  # rounds after the first with clients
    return {
        "backend": backend,
        "clients": num_clients,
        "rounds": rounds,
        "txs_per_round": max(txs),
        "gas_round_0": gas[0],
        "gas_first_round": gas[1],
        "gas_per_round": round(steady),
        "gas_per_client": round(steady / num_clients),
        "gas_per_client_first_round": round(gas[1] / num_clients),
        "gas_upload_per_client": round(uploads / num_clients),
        "gas_registration": registration,
        "wall_s_per_round": round(statistics.mean(wall[1:]), 4),
        "client_signing_s_per_round": round(statistics.mean(signing[1:]), 4),
    }


def marginal_gas_per_client(results: list[dict]) -> dict[str, int]:
    """Per backend: extra steady-state round gas per extra client, between its smallest and largest client count."""
    slopes = {}
    for backend in dict.fromkeys(r["backend"] for r in results):
        ours = sorted((r for r in results if r["backend"] == backend), key=lambda r: r["clients"])
        if len(ours) > 1 and ours[-1]["clients"] > ours[0]["clients"]:
            slopes[backend] = round(
                (ours[-1]["gas_per_round"] - ours[0]["gas_per_round"]) / (ours[-1]["clients"] - ours[0]["clients"])
            )
    return slopes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds with clients per measurement (at least 2)")
    parser.add_argument("--clients", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--backends", nargs="+", default=["embedded", "anvil"], choices=["embedded", "anvil"])
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds: give at least 2 (the first round with clients is reported apart)")
    results, skipped = [], {}
    for backend in args.backends:
        for num_clients in args.clients:
            try:
                results.append(measure(backend, num_clients, args.rounds))
            except ChainError as exc:
                skipped[backend] = str(exc)
                break
    report = {
        "targets": {"txs_per_round": TXS_PER_ROUND_TARGET},
        "all_within_target": all(r["txs_per_round"] == TXS_PER_ROUND_TARGET for r in results),
        "marginal_gas_per_client": marginal_gas_per_client(results),
        "results": results,
        "skipped": skipped,
    }
    print(json.dumps(report, indent=1))
    return 0 if report["all_within_target"] and not skipped else 1


if __name__ == "__main__":
    sys.exit(main())
