"""Gas and wall time per recorded round, by number of clients, on the embedded EVM and on anvil.

    python -m bench.chain_cost [--rounds 3] [--clients 2 8 32]

Every client first records its data upload (as in a run); then each round is one owner
transaction. gas_per_round/gas_per_client are for rounds after the first (the first round also
pays each client's first non-zero score slot, reported apart). Prints JSON; targets: 1 transaction
per round, amortized gas per client <= 30k."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from chain.errors import ChainError
from chain.ledger import open_ledger
from flb.config import ChainSettings
from flb.types import RoundRecord

GAS_PER_CLIENT_TARGET = 30_000


def measure(backend: str, num_clients: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        ledger = open_ledger(ChainSettings(backend=backend), Path(run_dir), num_clients)
        try:
            for client in range(num_clients):
                ledger.record_data_upload(client, f"sha256:{client + 1:064x}")
            ledger.wait_until_sent(300)
            gas, wall, txs = [], [], []
            for number in range(1, rounds + 1):
                start = time.perf_counter()
                ledger.record_round(_record(number, num_clients))
                ledger.wait_until_sent(300)
                wall.append(time.perf_counter() - start)
                entry = ledger.outbox.get(f"round:{number}")
                gas.append(entry.gas_used)
                txs.append(entry.history.count("submitted"))
        finally:
            ledger.close()
    steady = statistics.mean(gas[1:])  # a client's first score turns a zero slot non-zero (+~17k gas once)
    return {"backend": backend, "clients": num_clients, "rounds": rounds, "txs_per_round": max(txs),
            "gas_first_round": gas[0], "gas_per_round": round(steady), "gas_per_client": round(steady / num_clients),
            "gas_per_client_first_round": round(gas[0] / num_clients),
            "wall_s_per_round": round(statistics.mean(wall), 4),
            "within_target": max(txs) == 1 and steady / num_clients <= GAS_PER_CLIENT_TARGET}


def _record(number: int, num_clients: int) -> RoundRecord:
    clients = list(range(num_clients))
    return RoundRecord(number, f"{number:064x}", clients, [f"{number:032x}{c + 1:032x}" for c in clients],
                       [64] * num_clients, [2_000_000] * num_clients, {})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per measurement (at least 2)")
    parser.add_argument("--clients", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--backends", nargs="+", default=["embedded", "anvil"])
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds: give at least 2 (the first round is reported apart)")
    results, skipped = [], {}
    for backend in args.backends:
        for num_clients in args.clients:
            try:
                results.append(measure(backend, num_clients, args.rounds))
            except ChainError as exc:
                skipped[backend] = str(exc)
                break
    report = {"targets": {"txs_per_round": 1, "gas_per_client_max": GAS_PER_CLIENT_TARGET},
              "results": results, "skipped": skipped}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
