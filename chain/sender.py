"""The outbox's sender: one background thread that writes the queued records to the contract, in order.

A transient failure (the node does not answer, a timeout) is retried with backoff; after it, and before
anything is sent, every record the outbox calls confirmed is checked against the chain again
(reconciliation), so a record a restarted or rewound node lost is sent again, and the trail says so. A
permanent failure (a revert, an account that cannot pay, a conflicting record on chain) stops the
sender and is kept in `fatal_error` for the ledger to end the run with.
"""

from __future__ import annotations

import logging
import threading
import time

from chain.errors import ChainError, TransactionReverted
from chain.outbox import CONFIRMED, QUEUED, SUBMITTED, Entry, Outbox
from chain.records import batch_gas, call_for, on_chain
from chain.transact import send_signed, sign_call
from flb.errors import first_line

log = logging.getLogger(__name__)
RECEIPT_TIMEOUT_S = 120.0
RETRY_MIN_S, RETRY_MAX_S = 0.2, 10.0
MAX_SUBMISSIONS = 3
LOST = "lost by the chain"
# Node answers that no retry can change: the account cannot pay, or the transaction can never fit. A gas estimate
# capped by the sender's balance says "gas required exceeds allowance" (geth, anvil: "...allowance: 0" when unfunded).
_PERMANENT_RPC = (
    "insufficient funds",
    "exceeds block gas limit",
    "invalid sender",
    "doesn't have enough funds",
    "does not have enough balance",
    "gas required exceeds allowance",
)


def is_transient(exc: BaseException) -> bool:
    from web3.exceptions import ProviderConnectionError, TimeExhausted, Web3RPCError

    if isinstance(exc, (OSError, TimeExhausted, ProviderConnectionError)):
        return True
    return isinstance(exc, Web3RPCError) and not any(p in str(exc).lower() for p in _PERMANENT_RPC)


def permanent(exc: BaseException, action: str) -> ChainError:
    """A node error no retry will fix, as the one-line ChainError that ends the run."""
    if isinstance(exc, ChainError):
        return exc
    text = first_line(exc)
    if any(p in text.lower() for p in _PERMANENT_RPC):
        return ChainError(
            f"{action}: the admin account cannot pay for it ({text}); fund the run's admin account and resume the run"
        )
    return ChainError(f"{action}: the chain ledger stopped on {type(exc).__name__}: {text}")


class OutboxSender:
    def __init__(self, w3, admin, contract, outbox: Outbox, description: str):
        self.w3, self.admin, self.contract, self.outbox, self.description = w3, admin, contract, outbox, description
        self.fatal_error: ChainError | None = None
        self.lock = threading.RLock()  # one user of the node at a time: this thread, or an export/query
        self._wake, self._stop = threading.Event(), threading.Event()
        self._deadline, self._quiet_s = float("inf"), 0.0
        self._reconcile_needed = True
        self._thread = threading.Thread(target=self._loop, name="flb-chain-outbox", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout_s: float) -> None:
        """Check the chain once more, send what is queued (a record the chain lost included) for as long as a record
        is confirmed at least every `timeout_s` (a node that works through thousands of registrations is waited
        for; one that confirms nothing for `timeout_s` is not), then stop the thread."""
        self._reconcile_needed = True
        self._quiet_s = timeout_s
        self._deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._wake.set()
        while self._thread.is_alive():
            self._thread.join(timeout_s + 5)
            if time.monotonic() > self._deadline + 5:
                break

    def pending(self) -> int:
        return self.outbox.count(QUEUED, SUBMITTED)

    def reconcile(self) -> None:
        """Check every confirmed record against the chain; queue again (in order) each one the chain lost."""
        with self.lock:
            for entry in self.outbox.entries():
                if entry.status != CONFIRMED:
                    continue
                held = on_chain(self.contract, entry.kind, entry.payload)
                if held is False:
                    log.warning(
                        "%s was confirmed but %s no longer holds it; sending it again", entry.id, self.description
                    )
                    self.outbox.mark(entry.id, QUEUED, tx=None, error=f"{LOST} ({self.description}); sent again")
                elif held is not True:
                    raise ChainError(f"{entry.id}: {held}; the chain no longer holds this run's record")

    def _loop(self) -> None:
        delay = RETRY_MIN_S
        while not self._finished():
            try:
                with self.lock:
                    if self._reconcile_needed:
                        self.reconcile()
                        self._reconcile_needed = False
                    entry = self.outbox.next_pending()
                    if entry is not None:
                        self._deliver(entry)
                delay = RETRY_MIN_S
                if entry is None:
                    self._wake.wait(0.5)
                    self._wake.clear()
            except Exception as exc:
                if not is_transient(exc):
                    if isinstance(exc, TransactionReverted) and self._lost_records_requeued():
                        continue  # the revert came from a node that lost records: they go out again first
                    self.fatal_error = permanent(exc, "chain ledger")
                    log.error("%s; the records stay in %s", self.fatal_error, self.outbox.path)
                    return
                log.warning(
                    "chain not reachable (%s); %d records wait in the outbox, retrying in %.1f s",
                    first_line(exc),
                    self.pending(),
                    delay,
                )
                self._reconcile_needed = True
                self._wake.wait(delay)
                self._wake.clear()
                delay = min(2 * delay, RETRY_MAX_S)

    def _lost_records_requeued(self) -> bool:
        """Reconcile after a revert: a node that restarted on an older state while the sender was idle answers the
        next record with a revert (WrongRound) that no connection error announced. True when records were lost and
        are queued again, in order, before the one that reverted."""
        pending = self.pending()
        try:
            with self.lock:
                self.reconcile()
        except Exception:
            return False
        return self.pending() > pending

    def _finished(self) -> bool:
        if not self._stop.is_set():
            return False
        return not self.pending() or time.monotonic() > self._deadline

    def _deliver(self, entry: Entry) -> None:
        call, action = call_for(self.contract, entry.kind, entry.payload)
        if entry.tx and self._settle_submitted(entry):
            return
        held = on_chain(self.contract, entry.kind, entry.payload)
        if held is True:
            self.outbox.mark(entry.id, CONFIRMED, tx=None)  # which transaction wrote it is not known
            return
        if held is not False:
            raise TransactionReverted(
                f"{action}: {held}; each record is written once (a fresh contract, "
                "chain.contract_address: null, for a new run)"
            )
        if entry.history.count(SUBMITTED) >= MAX_SUBMISSIONS:
            raise TransactionReverted(
                f"{action}: {MAX_SUBMISSIONS} transactions failed on chain (last {entry.tx}); "
                "inspect it with python -m chain.explorer"
            )
        try:
            signed = sign_call(self.w3, self.admin, call, action, batch_gas(entry.kind, entry.payload))
        except Exception as exc:
            raise exc if is_transient(exc) else permanent(exc, action) from None
        self.outbox.mark(entry.id, SUBMITTED, tx="0x" + bytes(signed.hash).hex())
        receipt = send_signed(self.w3, signed, RECEIPT_TIMEOUT_S)
        if receipt["status"] == 1:
            self._confirm(entry, receipt)

    def _settle_submitted(self, entry: Entry) -> bool:
        """True when the transaction sent earlier for `entry` made it (waiting for it if still pending)."""
        from web3.exceptions import TransactionNotFound

        try:
            receipt = self.w3.eth.get_transaction_receipt(entry.tx)
        except TransactionNotFound:
            try:
                self.w3.eth.get_transaction(entry.tx)
            except TransactionNotFound:
                return False  # dropped, or a restarted chain: check the state and send again
            receipt = self.w3.eth.wait_for_transaction_receipt(entry.tx, timeout=RECEIPT_TIMEOUT_S, poll_latency=0.1)
        if receipt["status"] == 1:
            self._confirm(entry, receipt)
            return True
        return False

    def _confirm(self, entry: Entry, receipt) -> None:
        self.outbox.mark(entry.id, CONFIRMED, block=receipt["blockNumber"], gas_used=receipt["gasUsed"])
        if self._stop.is_set():  # closing: progress, so the node gets another quiet period
            self._deadline = time.monotonic() + self._quiet_s
        log.info("%s on chain (block %d, gas %d)", entry.id, receipt["blockNumber"], receipt["gasUsed"])
