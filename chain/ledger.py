"""The chain ledger: flb.types.Ledger over web3, with every write going through a durable outbox.

`record_*` only append to RUN_DIR/chain/outbox.jsonl and return; a background thread deploys the
contract on first use and sends the records in order, retrying while the chain is down. A record
already on chain is never sent again (the contract state is checked first), so reopening a run
directory sends exactly what is missing."""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from chain.backends import Node, connect, wrong_chain
from chain.contract import flb_contract, from_bytes32, to_bytes32
from chain.deploy import deploy
from chain.errors import ChainError, TransactionReverted
from chain.outbox import CONFIRMED, FAILED, QUEUED, SUBMITTED, Entry, Outbox
from chain.scoring import round_scores
from chain.trail import collect_trail, write_json_atomic, write_trail
from chain.transact import send_signed, sign_call
from flb.types import RoundRecord

log = logging.getLogger(__name__)
RECEIPT_TIMEOUT_S = 120.0
CLOSE_TIMEOUT_S = 60.0
RETRY_MIN_S, RETRY_MAX_S = 0.2, 10.0
MAX_SUBMISSIONS = 3
ZERO_ADDRESS = "0x" + "00" * 20


def open_ledger(settings, run_dir: Path, num_clients: int) -> "ChainLedger":
    """The ledger `settings.backend` names, for clients 0..num_clients-1, keeping its files in run_dir/chain."""
    run_dir = Path(run_dir)
    return ChainLedger(connect(settings, run_dir, num_clients), settings, run_dir)


def _transient_errors() -> tuple:
    from web3.exceptions import ProviderConnectionError, TimeExhausted, Web3RPCError

    return (OSError, TimeExhausted, ProviderConnectionError, Web3RPCError)


class ChainLedger:
    def __init__(self, node: Node, settings, run_dir: Path):
        self.node = node
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.chain_dir = self.run_dir / "chain"
        self.chain_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.chain_dir / "accounts.json", node.accounts.public())
        self.outbox = Outbox(self.chain_dir / "outbox.jsonl")
        self.fatal_error: ChainError | None = None
        self._contract = None
        self._chain_id: int | None = None
        self._exported_state = None
        self._exported_transactions: dict[str, dict] = {}
        self._chain_lock = threading.RLock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._close_deadline = float("inf")
        self._closed = False
        self._thread = threading.Thread(target=self._send_loop, name="flb-chain-outbox", daemon=True)
        self._thread.start()

    # --- the Ledger interface -------------------------------------------------------------

    def record_data_upload(self, client_id: int, data_digest: str) -> None:
        """Queue a shard digest ('sha256:<hex>'; a bare hex digest gets that prefix) as client
        `client_id`'s upload, signed by its account."""
        self.node.accounts.client(client_id)
        data_digest = data_digest if ":" in data_digest else f"sha256:{data_digest}"
        self._enqueue(f"upload:{client_id}:{data_digest}", "upload", {"client_id": client_id, "data": data_digest})

    def record_round(self, record: RoundRecord) -> None:
        """Queue the round's digests and scores: one owner transaction."""
        to_bytes32(record.global_digest, f"round {record.round} global_digest")
        if not len(record.client_ids) == len(record.update_digests) == len(record.num_examples) == len(record.update_num_bytes):
            raise ChainError(f"round {record.round}: client_ids, update_digests, num_examples and update_num_bytes "
                             "differ in length; give one entry per accepted client")
        for client_id, digest in zip(record.client_ids, record.update_digests):
            self.node.accounts.client(client_id)
            to_bytes32(digest, f"round {record.round} client {client_id} update digest")
        payload = {
            "round": record.round, "global_digest": record.global_digest, "client_ids": list(record.client_ids),
            "update_digests": list(record.update_digests),
            "scores": round_scores(record, self.settings.scoring, self._upload_counts()),
        }
        self._enqueue(f"round:{record.round}", "round", payload)

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Send what is queued (up to `timeout_s`), export the trail, stop a started anvil."""
        if self._closed:
            return
        self._closed = True
        self._close_deadline = time.monotonic() + timeout_s
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout_s + 5)
        if not self._thread.is_alive():
            self._export()
        pending = self.outbox.count(QUEUED, SUBMITTED)
        if pending:
            log.warning("%d chain records not yet sent stay in %s; they are sent when a ledger opens %s again",
                        pending, self.outbox.path, self.run_dir)
        self.node.stop()
        self.outbox.close()

    # --- queries --------------------------------------------------------------------------

    def wait_until_sent(self, timeout_s: float) -> bool:
        """True once every queued record is confirmed or failed (for tests and benchmarks)."""
        deadline = time.monotonic() + timeout_s
        while self.outbox.count(QUEUED, SUBMITTED) and time.monotonic() < deadline and self.fatal_error is None:
            time.sleep(0.05)
        return not self.outbox.count(QUEUED, SUBMITTED)

    def summary(self) -> dict:
        """What a run's end summary prints: chain, contract, the run's transactions, the explorer command."""
        deployment = self._read_deployment() or {}
        template = self.settings.explorer_url
        transactions = [{"record": "deploy", "status": CONFIRMED, "tx": deployment["tx"]}] if deployment else []
        transactions += [{"record": e.id, "status": e.status, "tx": e.tx} for e in self.outbox.entries()]
        if template:
            for tx in transactions:
                tx["link"] = template.format(tx=tx["tx"]) if tx["tx"] else None
        return {
            "chain": self.node.description, "backend": self.node.backend, "chain_id": deployment.get("chain_id"),
            "contract": deployment.get("address"), "transactions": transactions,
            "pending": self.outbox.count(QUEUED, SUBMITTED), "failed": self.outbox.count(FAILED),
            "explorer": f"python -m chain.explorer {self.run_dir}",
            "verify": f"python -m chain.explorer --verify {self.run_dir}",
        }

    def scores(self) -> dict[int, int]:
        """Cumulative on-chain score of each client."""
        with self._chain_lock:
            contract = self._ready_contract()
            return {i: contract.functions.getScore(a.address).call() for i, a in enumerate(self.node.accounts.clients)}

    def get_round(self, round_number: int) -> dict | None:
        """A round as recorded: arrays from its event, checked on chain against the stored hash."""
        with self._chain_lock:
            contract = self._ready_contract()
            if not contract.functions.roundExists(round_number).call():
                return None
            from_block = (self._read_deployment() or {}).get("block", 0)
            events = contract.events.RoundRecorded().get_logs(from_block=from_block, argument_filters={"round": round_number})
            args = events[0]["args"]
            on_chain = contract.functions.verifyRound(round_number, args["globalDigest"], args["clients"],
                                                      args["updateDigests"], args["scores"]).call()
        if not on_chain:
            raise ChainError(f"round {round_number}: its event does not match the stored record hash; the node is not trustworthy")
        return {"round": round_number, "global_digest": from_bytes32(args["globalDigest"]),
                "clients": list(args["clients"]), "update_digests": [from_bytes32(d) for d in args["updateDigests"]],
                "scores": list(args["scores"])}

    # --- queueing -------------------------------------------------------------------------

    def _enqueue(self, entry_id: str, kind: str, payload: dict) -> None:
        if self._closed:
            raise ChainError(f"{entry_id}: the ledger is closed; open a new one with chain.ledger.open_ledger")
        if not self.outbox.add(entry_id, kind, payload):
            if self.outbox.get(entry_id).payload != payload:
                log.warning("%s is already in the outbox with other values; the first record is kept", entry_id)
            return
        self._wake.set()

    def _upload_counts(self) -> dict[int, int]:
        """Uploads per client as the contract will hold them: a digest counts for its first claimant only
        (records go out in queue order), so scores never depend on how far the sender has got."""
        counts: dict[int, int] = {}
        claimed: set[str] = set()
        for entry in self.outbox.entries():
            if entry.kind == "upload" and entry.payload["data"] not in claimed:
                claimed.add(entry.payload["data"])
                counts[entry.payload["client_id"]] = counts.get(entry.payload["client_id"], 0) + 1
        return counts

    # --- the sender thread ----------------------------------------------------------------

    def _send_loop(self) -> None:
        transient = _transient_errors()
        delay = RETRY_MIN_S
        while not self._finished():
            try:
                with self._chain_lock:
                    worked = self._send_next()
                delay = RETRY_MIN_S
                if not worked:
                    self._export()
                    self._wake.wait(0.5)
                    self._wake.clear()
            except transient as exc:
                log.warning("chain not reachable (%s); %d records wait in the outbox, retrying in %.1f s",
                            _first_line(exc), self.outbox.count(QUEUED, SUBMITTED), delay)
                self._wake.wait(delay)
                self._wake.clear()
                delay = min(2 * delay, RETRY_MAX_S)
            except ChainError as exc:
                self._stop_sending(exc)
                return
            except Exception as exc:
                self._stop_sending(ChainError(f"chain ledger stopped on an unexpected {type(exc).__name__}: "
                                              f"{_first_line(exc)}; report it with {self.outbox.path}"))
                return

    def _stop_sending(self, error: ChainError) -> None:
        self.fatal_error = error
        log.error("%s; records stay in %s and are sent when a ledger opens this run directory again",
                  error, self.outbox.path)

    def _finished(self) -> bool:
        if not self._closing.is_set():
            return False
        return not self.outbox.count(QUEUED, SUBMITTED) or time.monotonic() > self._close_deadline

    def _send_next(self) -> bool:
        self._ready_contract()
        entry = self.outbox.next_pending()
        if entry is None:
            return False
        try:
            self._deliver(entry)
        except TransactionReverted as exc:
            log.error("%s", exc)
            self.outbox.mark(entry.id, FAILED, error=str(exc))
        return True

    def _deliver(self, entry: Entry) -> None:
        account, call, action = self._call_for(entry)
        if entry.tx and self._settle_submitted(entry):
            return
        if self._on_chain(entry, account, action):
            self.outbox.mark(entry.id, CONFIRMED, tx=None)  # which transaction wrote it is not known
            return
        if entry.history.count(SUBMITTED) >= MAX_SUBMISSIONS:
            raise TransactionReverted(f"{action}: {MAX_SUBMISSIONS} transactions failed on chain (last {entry.tx}); "
                                      "inspect it with python -m chain.explorer")
        signed = sign_call(self.node.w3, account, call, action)
        self.outbox.mark(entry.id, SUBMITTED, tx=_hex(signed.hash))
        receipt = send_signed(self.node.w3, signed, RECEIPT_TIMEOUT_S)
        if receipt["status"] == 1:
            self._confirm(entry, receipt)

    def _settle_submitted(self, entry: Entry) -> bool:
        """True when the transaction sent earlier for `entry` made it (waiting for it if still pending)."""
        from web3.exceptions import TransactionNotFound

        w3 = self.node.w3
        try:
            receipt = w3.eth.get_transaction_receipt(entry.tx)
        except TransactionNotFound:
            try:
                w3.eth.get_transaction(entry.tx)
            except TransactionNotFound:
                return False  # dropped, or a restarted chain: check the state and send again
            receipt = w3.eth.wait_for_transaction_receipt(entry.tx, timeout=RECEIPT_TIMEOUT_S, poll_latency=0.1)
        if receipt["status"] == 1:
            self._confirm(entry, receipt)
            return True
        return False

    def _confirm(self, entry: Entry, receipt) -> None:
        self.outbox.mark(entry.id, CONFIRMED, block=receipt["blockNumber"], gas_used=receipt["gasUsed"])
        log.info("%s on chain (block %d, gas %d)", entry.id, receipt["blockNumber"], receipt["gasUsed"])

    def _call_for(self, entry: Entry):
        payload = entry.payload
        if entry.kind == "upload":
            account = self.node.accounts.client(payload["client_id"])
            call = self._contract.functions.uploadUserData(payload["data"])
            return account, call, f"data upload of client {payload['client_id']}"
        clients = [self.node.accounts.client(i).address for i in payload["client_ids"]]
        digests = [to_bytes32(d, f"round {payload['round']} update digest") for d in payload["update_digests"]]
        call = self._contract.functions.recordRound(payload["round"], to_bytes32(payload["global_digest"], "global digest"),
                                                    clients, digests, payload["scores"])
        return self.node.accounts.admin, call, f"round {payload['round']} record"

    def _on_chain(self, entry: Entry, account, action: str) -> bool:
        """True when the chain already holds this record; a conflicting record raises TransactionReverted."""
        functions = self._contract.functions
        if entry.kind == "upload":
            uploader = functions.uploaderOf(entry.payload["data"]).call()
            if uploader not in (ZERO_ADDRESS, account.address):
                raise TransactionReverted(f"{action}: the contract holds this digest as uploaded by {uploader} "
                                          "('Data already uploaded'); each data shard is recorded once")
            return uploader == account.address
        round_number = entry.payload["round"]
        if not functions.roundExists(round_number).call():
            return False
        _, call, _ = self._call_for(entry)
        if functions.verifyRound(*call.args).call():
            return True
        raise TransactionReverted(f"{action}: round {round_number} is on chain with other digests ('Round already recorded'); "
                                  "use a fresh contract (chain.contract_address: null) for a new run")

    # --- contract and deployment ----------------------------------------------------------

    def _ready_contract(self):
        if self._contract is None:
            self._chain_id = self.node.w3.eth.chain_id
            if self.node.backend == "rpc" and self._chain_id != self.settings.chain_id:
                raise wrong_chain(self.settings.rpc_url, self._chain_id, self.settings.chain_id)
            self._contract = self._existing_contract() or self._deploy()
            self._reconcile()
        return self._contract

    def _existing_contract(self):
        configured = self.settings.contract_address
        stored = self._read_deployment()
        address = configured or (stored or {}).get("address")
        if address is None:
            return None
        if self.node.w3.eth.get_code(self.node.w3.to_checksum_address(address)):
            return flb_contract(self.node.w3, address)
        if configured:
            raise ChainError(f"chain.contract_address: no contract at {configured} on {self.node.description}; "
                             "fix the address or set it to null to deploy a new one")
        log.warning("the FLB contract of this run directory is not on %s (a new embedded chain); deploying again "
                    "and re-sending the outbox", self.node.description)
        return None

    def _deploy(self):
        w3, admin = self.node.w3, self.node.accounts.admin
        receipt = deploy(w3, admin)
        deployment = {"backend": self.node.backend, "chain_id": self._chain_id, "address": receipt["contractAddress"],
                      "tx": _hex(receipt["transactionHash"]),
                      "block": receipt["blockNumber"], "owner": admin.address}
        write_json_atomic(self.chain_dir / "deployment.json", deployment)
        log.info("deployed FLB at %s on %s", deployment["address"], self.node.description)
        return flb_contract(w3, deployment["address"])

    def _read_deployment(self) -> dict | None:
        path = self.chain_dir / "deployment.json"
        if self.settings.contract_address:
            return {"address": self.settings.contract_address, "chain_id": self._chain_id, "tx": None, "block": 0}
        return json.loads(path.read_text()) if path.is_file() else None

    def _reconcile(self) -> None:
        """Re-queue confirmed records the chain does not hold (a new embedded chain, a reset node)."""
        for entry in self.outbox.entries():
            if entry.status != CONFIRMED:
                continue
            account, _, action = self._call_for(entry)
            if not self._on_chain(entry, account, action):
                self.outbox.mark(entry.id, QUEUED, tx=None, error=f"not on {self.node.description}; sending again")

    # --- export ---------------------------------------------------------------------------

    def _export(self) -> None:
        """Write RUN_DIR/chain/trail.json when the confirmed records changed since the last export."""
        deployment = self._read_deployment()
        entries = self.outbox.entries()
        state = (deployment and deployment.get("address"), tuple((e.id, e.status, e.tx) for e in entries))
        if deployment is None or state == self._exported_state:
            return
        tx_hashes = [deployment["tx"]] if deployment.get("tx") else []
        tx_hashes += [e.tx for e in entries if e.tx and e.status in (CONFIRMED, FAILED)]
        meta = {"backend": self.node.backend, "chain": self.node.description, "chain_id": self._chain_id,
                "explorer_url": self.settings.explorer_url, "accounts": self.node.accounts.public(), "deployment": deployment}
        try:
            with self._chain_lock:
                trail = collect_trail(self.node.w3, deployment["address"], tx_hashes, meta, self._exported_transactions)
        except _transient_errors() as exc:
            log.warning("chain trail not exported (%s); the outbox still holds every record", _first_line(exc))
            return
        write_trail(self.chain_dir, trail)
        self._exported_state = state


def _hex(value: bytes) -> str:
    return "0x" + bytes(value).hex()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
