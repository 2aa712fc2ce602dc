"""A server that lies on purpose, for the audit's adversarial tests: it reopens a finished run's chain as its owner
(it holds the admin key, and in-process runs also hold every client key) and records one more round of its own
making, writing the files that make the run directory agree with what it recorded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from chain.deployment import RunAnchors
from chain.ledger import open_ledger
from chain.transact import send_signed, sign_call
from flb.adapters.arithmetic import weighted_average
from flb.adapters.compression import as_received, open_update
from flb.audit.attestation import sign_update
from flb.audit.digests import adapter_config_digest, adapter_digest, metrics_digest
from flb.audit.keystore import run_key_account
from flb.audit.run_spec import run_spec_digest
from flb.config import ChainSettings
from flb.run.summary import round_rows, summary_numbers
from flb.types import RoundRecord


class LyingServer:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        anchors = RunAnchors(
            adapter_config_digest(run_dir / "round_0"),
            run_spec_digest(json.loads((run_dir / "config.json").read_text())),
        )
        self.ledger = open_ledger(ChainSettings(), run_dir, anchors)
        self.addresses = json.loads((run_dir / "chain" / "accounts.json").read_text())["clients"]

    def client_key(self, client_id: int):
        """An in-process client's key: it lives in the run directory the server writes."""
        return run_key_account(self.run_dir / "private" / f"client_{client_id}")

    def register(self, account) -> int:
        """Register a key of the server's own as one more client (the owner may); returns its client id."""
        ledger = self.ledger
        call = ledger.contract.functions.registerClients([account.address])
        with ledger.sender.lock:
            assert (
                send_signed(ledger.node.w3, sign_call(ledger.node.w3, ledger.node.accounts.admin, call, "sybil"), 30)[
                    "status"
                ]
                == 1
            )
        self.addresses.append(account.address)
        client_id = len(self.addresses) - 1
        path = self.run_dir / "chain" / "accounts.json"  # and lists it with its id, as its ledger would
        accounts = json.loads(path.read_text())
        path.write_text(json.dumps({**accounts, "clients": self.addresses, "ids": [*accounts["ids"], client_id]}))
        return client_id

    def honest_aggregate(self, updates: list[tuple[int, dict, int]]) -> dict:
        """What an honest server would publish: the mean of `updates` sent as the run's
        comm.broadcast_compression says."""
        return as_received(self._comm()["broadcast_compression"], self.mean_of(updates))

    def mean_of(self, updates: list[tuple[int, dict, int]]) -> dict:
        """FedAvg of (client id, update as sent, examples) in the chain's order, each update opened (under the run's
        comm.compression) from the last global adapter."""
        previous = self.global_adapter(self.ledger.contract.functions.nextRound().call() - 1)
        in_chain_order = sorted(updates, key=lambda u: int(self.addresses[u[0]], 16))
        codec = self._comm()["compression"]
        return weighted_average([(open_update(codec, sent, previous), count) for _, sent, count in in_chain_order])

    def _comm(self) -> dict:
        return json.loads((self.run_dir / "config.json").read_text())["comm"]

    def record_round(
        self,
        updates: list[tuple[int, dict, int]],
        global_adapter: dict,
        *,
        keys: dict | None = None,
        bytes_factor: int = 1,
    ) -> int:
        """Record the next round: (client id, update tensors, examples) each signed with that client's key (`keys`
        for ids whose key is not in the run directory), `global_adapter` as its result; the round's files, a metrics
        row, final_adapter/ and summary.json written to agree. `bytes_factor` inflates the update sizes the flb score
        is computed from. Returns the round number."""
        keys = keys or {}
        number = self.ledger.contract.functions.nextRound().call()
        previous = self.ledger.contract.functions.lastGlobalDigest().call().hex()
        folder = self.run_dir / f"round_{number}"
        shutil.copytree(self.run_dir / f"round_{number - 1}", folder, ignore=shutil.ignore_patterns("updates"))
        save_file(global_adapter, str(folder / "adapter_model.safetensors"))
        (folder / "updates").mkdir()
        digests, signatures = [], []
        for client_id, tensors, count in updates:
            save_file(tensors, str(folder / "updates" / f"client_{client_id}.safetensors"))
            digests.append(adapter_digest(tensors))
            key = keys.get(client_id) or self.client_key(client_id)
            signatures.append(
                sign_update(
                    key,
                    self.ledger.signing_domain,
                    round=number,
                    previous_global_digest=previous,
                    update_digest=digests[-1],
                    num_examples=count,
                )
            )
        row = {
            "kind": "round",
            "round": number,
            "global_digest": adapter_digest(global_adapter),
            "num_clients": len(updates),
            "eval_loss": 0.5,
            "accuracy": 0.5,
        }
        with open(self.run_dir / "metrics.jsonl", "a") as metrics:
            metrics.write(json.dumps(row, sort_keys=True) + "\n")
        self.ledger.record_round(
            RoundRecord(
                round=number,
                previous_global_digest=previous,
                global_digest=row["global_digest"],
                client_ids=[u[0] for u in updates],
                addresses=[self.addresses[u[0]] for u in updates],
                update_digests=digests,
                num_examples=[u[2] for u in updates],
                signatures=signatures,
                update_num_bytes=[
                    bytes_factor * sum(t.numel() * t.element_size() for t in u[1].values()) for u in updates
                ],
                metrics={},
                metrics_digest=metrics_digest(row),
            )
        )
        self._finish(folder, number, row["global_digest"])
        return number

    def update_of(self, round_number: int, client_id: int) -> dict:
        return load_file(str(self.run_dir / f"round_{round_number}" / "updates" / f"client_{client_id}.safetensors"))

    def global_adapter(self, round_number: int) -> dict:
        return load_file(str(self.run_dir / f"round_{round_number}" / "adapter_model.safetensors"))

    def close(self) -> None:
        assert self.ledger.close() is None

    def _finish(self, folder: Path, number: int, digest: str) -> None:
        shutil.rmtree(self.run_dir / "final_adapter")
        shutil.copytree(folder, self.run_dir / "final_adapter", ignore=shutil.ignore_patterns("updates"))
        summary_path = self.run_dir / "summary.json"
        rows = round_rows([json.loads(line) for line in (self.run_dir / "metrics.jsonl").read_text().splitlines()])
        summary = {**json.loads(summary_path.read_text()), **summary_numbers(rows), "final_digest": digest}
        summary_path.write_text(json.dumps(summary, indent=2))
        checkpoint = self.run_dir / "checkpoint.json"
        checkpoint.write_text(
            json.dumps({**json.loads(checkpoint.read_text()), "round": number, "global_digest": digest})
        )
