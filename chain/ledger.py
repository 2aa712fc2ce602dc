"""The chain ledger: flb.types.Ledger over web3, every write going through a durable outbox.

Opening a ledger finds the run's contract on its chain (chain/deployment.py: deployed on first use,
checked to be the same chain on every reopen), so the clients know what they sign for. `record_*`
only append to RUN_DIR/chain/outbox.jsonl and return; a background thread (chain/sender.py) sends the
records in order. A record already on chain is never sent again, a record the chain lost is sent
again, and a record that cannot be sent for a permanent cause ends the run (`check`, `close`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from chain.contract import flb_contract
from chain.deployment import RunAnchors, deploy_or_attach, read_deployment
from chain.errors import ChainError
from chain.outbox import CONFIRMED, QUEUED, SUBMITTED, Outbox
from chain.records import REGISTER, ROUND, UPLOAD, batch_size, batches, register_payload, round_payload, upload_payload
from chain.sender import LOST, OutboxSender, is_transient, permanent
from chain.trail import client_ids, collect_trail, contract_tx_hashes, write_trail
from flb.atomic import write_json_atomic
from flb.audit.attestation import SigningDomain
from flb.errors import RunFailed, first_line
from flb.types import RoundRecord, SignedUpload

log = logging.getLogger(__name__)
CLOSE_TIMEOUT_S = 60.0
OPEN_TIMEOUT_S = 60.0


def preflight(settings, *, in_process_clients: bool, num_clients: int) -> None:
    """Fail now, before anything is created, on what would make the ledger fail at once."""
    from chain.backends import check_node

    check_node(settings, in_process_clients=in_process_clients, num_clients=num_clients)


def open_ledger(settings, run_dir: Path, anchors: RunAnchors) -> ChainLedger:
    """The ledger `settings.backend` names, keeping its files in run_dir/chain, on the run's contract (which anchors
    `anchors`)."""
    from chain.backends import connect

    return ChainLedger(connect(settings, Path(run_dir)), settings, Path(run_dir), anchors)


class ChainLedger:
    def __init__(self, node, settings, run_dir: Path, anchors: RunAnchors):
        self.node, self.settings, self.run_dir = node, settings, run_dir
        self.chain_dir = run_dir / "chain"
        self.chain_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(self.chain_dir / "outbox.jsonl")
        try:
            self.deployment = _with_retries(
                lambda: deploy_or_attach(node, self.chain_dir, settings.contract_address, anchors),
                "the run's FLB contract",
            )
        except BaseException:
            node.stop()
            raise
        self.contract = flb_contract(node.w3, self.deployment["address"])
        self.signing_domain = SigningDomain(self.deployment["chain_id"], self.contract.address)
        # what one registration or upload batch may spend: the configured limit, or the node's block gas limit
        self.gas_limit = settings.block_gas_limit or node.w3.eth.get_block("latest")["gasLimit"]
        self.sender = OutboxSender(node.w3, node.accounts.admin, self.contract, self.outbox, node.description)
        self._exported_state, self._exported_transactions = None, {}
        self._closed = False
        self.sender.start()

    # --- the Ledger interface -------------------------------------------------------------

    def register_clients(self, addresses: dict[int, str]) -> None:
        """Queue the clients' registration (only registered clients can upload or be recorded), in batches that each
        fit one transaction; clients registered later (their nodes joined late) come after the others, in client id
        order as the chain lists them. accounts.json lists each address with its client id."""
        earlier = client_ids(self._accounts_or_admin())
        ordered = sorted(addresses)
        write_json_atomic(
            self.chain_dir / "accounts.json",
            {
                "admin": self.node.accounts.admin.address,
                "clients": [*earlier, *(addresses[i] for i in ordered)],
                "ids": [*earlier.values(), *ordered],
            },
        )
        for name, batch in batches(addresses, batch_size(REGISTER, self.gas_limit)):
            self._enqueue(f"register:{name}", REGISTER, register_payload(batch))

    def record_data_uploads(self, uploads: dict[int, SignedUpload]) -> None:
        """Queue the clients' signed data uploads (relayed by the admin: clients need no funds), in batches that
        each fit one transaction."""
        addresses = {client_id: address for address, client_id in client_ids(self._accounts()).items()}
        with_address = {client_id: (addresses[client_id], upload) for client_id, upload in uploads.items()}
        for name, batch in batches(with_address, batch_size(UPLOAD, self.gas_limit)):
            self._enqueue(f"upload:{name}", UPLOAD, upload_payload(batch))
        if self.node.backend == "embedded" and self.sender.pending():
            # the embedded chain executes in this process: its batches (minutes for thousands of clients) are
            # mined now, before round 1, not while the rounds train
            log.info("embedded chain: mining %d registration and upload batches before round 1", self.sender.pending())
            self.wait_until_sent(float("inf"))

    def record_round(self, record: RoundRecord) -> None:
        """Queue the round's record: one owner transaction."""
        self._enqueue(
            f"round:{record.round}", ROUND, round_payload(record, self.settings.scoring, self._upload_counts())
        )

    def check(self) -> None:
        """Raise RunFailed when a record cannot be sent for a permanent cause (the run must not go on unrecorded)."""
        if self.sender.fatal_error is not None:
            raise RunFailed(f"{self.sender.fatal_error}; the unsent records stay in {self.outbox.path}")

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> str | None:
        """Send what is queued (while the node confirms a record at least every `timeout_s`), check the chain still
        holds every confirmed record, export the trail and stop the node. Returns why the run's records are not all
        on chain, or None when they are."""
        if self._closed:
            return None
        self._closed = True
        self.sender.stop(timeout_s)
        try:
            self.sender.reconcile()
            self._export()
        except Exception as exc:
            if self.sender.fatal_error is None:
                self.sender.fatal_error = exc if isinstance(exc, ChainError) else permanent(exc, "final check")
        self.node.stop()
        self.outbox.close()
        if self.sender.fatal_error is not None:
            return f"{self.sender.fatal_error}; the unsent records stay in {self.outbox.path}"
        pending = self.outbox.count(QUEUED, SUBMITTED)
        if pending:
            return (
                f"{pending} chain records were not confirmed ({self.node.description} confirmed none for "
                f"{timeout_s:.0f} s: unreachable?); they stay in {self.outbox.path} and are sent by --resume "
                f"{self.run_dir}"
            )
        return None

    # --- queries --------------------------------------------------------------------------

    def wait_until_sent(self, timeout_s: float) -> bool:
        """True once every queued record is confirmed (for tests and benchmarks)."""
        deadline = time.monotonic() + timeout_s
        while self.sender.pending() and time.monotonic() < deadline and self.sender.fatal_error is None:
            time.sleep(0.05)
        return not self.sender.pending()

    def summary(self) -> dict:
        """What a run's end summary prints: chain, contract, the run's transactions, the explorer commands."""
        deployment = self.deployment
        transactions = [{"record": "deploy", "status": CONFIRMED, "tx": deployment["tx"]}] if deployment["tx"] else []
        transactions += [{"record": e.id, "status": e.status, "tx": e.tx} for e in self.outbox.entries()]
        if self.settings.explorer_url:
            for tx in transactions:
                tx["link"] = self.settings.explorer_url.format(tx=tx["tx"]) if tx["tx"] else None
        return {
            "chain": self.node.description,
            "backend": self.node.backend,
            "chain_id": deployment["chain_id"],
            "contract": deployment["address"],
            "transactions": transactions,
            "pending": self.outbox.count(QUEUED, SUBMITTED),
            "explorer": f"python -m chain.explorer {self.run_dir}",
            "verify": f"python -m chain.explorer {self.run_dir} --verify",
        }

    def scores(self) -> dict[int, int]:
        """Cumulative on-chain score of each client."""
        with self.sender.lock:
            return {
                client_id: self.contract.functions.getScore(address).call()
                for address, client_id in client_ids(self._accounts()).items()
            }

    # --- internals ------------------------------------------------------------------------

    def _enqueue(self, entry_id: str, kind: str, payload: dict) -> None:
        if self._closed:
            raise ChainError(f"{entry_id}: the ledger is closed; open a new one with chain.ledger.open_ledger")
        if not self.outbox.add(entry_id, kind, payload):
            if self.outbox.get(entry_id).payload != payload:
                log.warning("%s is already in the outbox with other values; the first record is kept", entry_id)
            return
        self.sender.wake()

    def _accounts(self) -> dict:
        import json

        return json.loads((self.chain_dir / "accounts.json").read_text())

    def _upload_counts(self) -> dict[int, int]:
        """Uploads per client as the contract will hold them (each shard once), whatever the sender has sent."""
        counts: dict[int, int] = {}
        for entry in self.outbox.entries():
            for upload in entry.payload["uploads"] if entry.kind == UPLOAD else ():
                counts[upload["client_id"]] = counts.get(upload["client_id"], 0) + 1
        return counts

    def _export(self) -> None:
        """Write RUN_DIR/chain/trail.json (the transactions, decoded, and the records sent again) when the confirmed
        records changed since the last export."""
        entries = self.outbox.entries()
        state = tuple((e.id, e.status, e.tx) for e in entries)
        if state == self._exported_state:
            return
        deployment = read_deployment(self.chain_dir) or self.deployment
        resent = [{"record": e.id, "note": e.error} for e in entries if e.error and LOST in e.error]
        meta = {
            "backend": self.node.backend,
            "chain": self.node.description,
            "chain_id": deployment["chain_id"],
            "explorer_url": self.settings.explorer_url,
            "accounts": self._accounts_or_admin(),
            "deployment": deployment,
            "resent": resent,
        }
        with self.sender.lock:  # every transaction of the contract, however it was sent (the deployment's anchor too)
            tx_hashes = contract_tx_hashes(self.node.w3, deployment["address"], deployment.get("block") or 0)
            trail = collect_trail(self.node.w3, deployment["address"], tx_hashes, meta, self._exported_transactions)
        write_trail(self.chain_dir, trail)
        self._exported_state = state

    def _accounts_or_admin(self) -> dict:
        if (self.chain_dir / "accounts.json").is_file():
            return self._accounts()
        return {"admin": self.node.accounts.admin.address, "clients": []}


def _with_retries(attempt, what: str, timeout_s: float = OPEN_TIMEOUT_S):
    """`attempt()`, retried with backoff while the node is unreachable, for up to `timeout_s`."""
    deadline, delay = time.monotonic() + timeout_s, 0.5
    while True:
        try:
            return attempt()
        except Exception as exc:
            if isinstance(exc, ChainError):
                raise
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise ChainError(f"{what}: {first_line(exc)}") from None
            log.warning("chain not reachable (%s); retrying in %.1f s", first_line(exc), delay)
            time.sleep(delay)
            delay = min(2 * delay, 10.0)
