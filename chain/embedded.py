"""The embedded chain (py-evm in process), durable: its whole database lives in RUN_DIR/chain/embedded_chain.db.

py-evm keeps every block, transaction, receipt and state trie node in one key/value database.
eth-tester builds it over an in-memory dict; here that dict is filled from the file when it exists.
Opening the chain for writing replaces the file atomically (flb.atomic.write_atomic) with a snapshot
of the whole database; after every mined block the keys the block changed are appended to it as one
segment and flushed to disk, so saving a block costs what the block wrote, not what the chain holds.
A run killed at any moment leaves the previous block's or the new block's chain: a segment cut short
(or damaged) at the end of the file is a block whose save did not finish, and is dropped when the
file is read (the writer logs it; the outbox sends a record the chain lost again). Blocks are mined
one per transaction (eth-tester's auto-mining); the pending block and eth-tester's own filters and
snapshots are not saved.

File format: MAGIC, chain id (u64), entry count (u32), then per entry key length (u32), value
length (u32), key, value; then the SHA-256 of everything before it (the snapshot). Then any number
of segments: the payload's length (u32) and its CRC-32 (u32), the payload: entry count (u32) and
the entries as above (value length DELETED: the key was deleted, no value follows); then the SHA-256
of the previous digest and the segment. A file of version 1 is a snapshot alone. The file grows
linearly with the chain (about 2.3 kB per plain transfer: each block's changed keys, overwritten ones included)."""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from eth.db.atomic import AtomicDB
from eth.db.backends.memory import MemoryDB
from eth.estimators.gas import binary_gas_search_intrinsic_tolerance
from eth.vm.spoof import SpoofTransaction
from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.backends.pyevm.main import ZERO_ADDRESS
from web3 import EthereumTesterProvider, Web3

from chain.accounts import DEV_HD_PATH, DEV_MNEMONIC
from chain.errors import ChainError
from chain.locks import StateLock
from flb.atomic import write_atomic

EMBEDDED_CHAIN_FILE = "embedded_chain.db"
MAGIC = b"FLB py-evm chain database v2\n"
MAGIC_V1 = b"FLB py-evm chain database v1\n"  # a snapshot alone: the files of runs made before segments
_HEADER = struct.Struct(">QI")
_COUNT = struct.Struct(">I")
_FRAME = struct.Struct(">II")  # a segment's payload length, and the CRC-32 of that length
_ENTRY = struct.Struct(">II")
_DIGEST_SIZE = 32
DELETED = 0xFFFFFFFF  # an entry's value length when its key was deleted

log = logging.getLogger("chain.embedded")

Database = dict[bytes, bytes]


class ChangedKeys(dict):
    """py-evm's key/value store, noting the keys set or deleted since the changes were last saved."""

    def __init__(self, *args):
        super().__init__(*args)
        self.changed: set[bytes] = set()

    def __setitem__(self, key: bytes, value: bytes) -> None:
        super().__setitem__(key, value)
        self.changed.add(key)

    def __delitem__(self, key: bytes) -> None:
        super().__delitem__(key)
        self.changed.add(key)

    def changes(self) -> dict[bytes, bytes | None]:
        """Each changed key's value now, None for a deleted one."""
        return {key: self.get(key) for key in self.changed}

    def mark_saved(self) -> None:
        self.changed.clear()


class DurablePyEVMBackend(PyEVMBackend):
    """eth-tester's py-evm backend over `database` (a new chain when None) that calls `on_block`
    with its database after every change of the canonical chain."""

    def __init__(
        self,
        num_accounts: int,
        database: Database | None = None,
        on_block: Callable[[ChangedKeys], None] | None = None,
        gas_limit: int | None = None,
    ):
        genesis = self.generate_genesis_state(mnemonic=DEV_MNEMONIC, num_accounts=num_accounts, hd_path=DEV_HD_PATH)
        parameters = self.generate_genesis_params({"gas_limit": gas_limit}) if gas_limit else None
        super().__init__(
            genesis_parameters=parameters, genesis_state=genesis, mnemonic=DEV_MNEMONIC, hd_path=DEV_HD_PATH
        )
        # same chain class (chain id, VM schedule) as the fresh genesis chain, over the saved database (its
        # pending block is built on the saved head) or the genesis one; where blocks are saved, in a store that
        # notes what each block changes
        kind = dict if on_block is None else ChangedKeys
        store = kind(self.database if database is None else database)
        self.chain = type(self.chain)(AtomicDB(MemoryDB(store)))
        self.chain.gas_estimator = estimate_gas
        self.on_block = on_block

    @property
    def database(self) -> Database:
        """py-evm's key/value store: a ChangedKeys where `on_block` saves the blocks."""
        return self.chain.chaindb.db.wrapped_db.kv_store

    def call(self, transaction, block_number="latest"):
        return super().call(self._priced(transaction, block_number), block_number)

    def estimate_gas(self, transaction, block_number="latest"):
        return super().estimate_gas(self._priced(transaction, block_number), block_number)

    def _priced(self, transaction: dict, block_number) -> dict:
        """eth-tester prices a call that names no fee at 1 gwei, which py-evm refuses once full blocks (a batch of
        thousands of registrations) have raised the base fee past it; a node prices it to pass: twice the base fee."""
        if any(key in transaction for key in ("gas_price", "max_fee_per_gas", "max_priority_fee_per_gas")):
            return transaction
        return {**transaction, "max_fee_per_gas": 2 * self.get_base_fee(block_number), "max_priority_fee_per_gas": 0}

    def mine_blocks(self, num_blocks=1, coinbase=ZERO_ADDRESS):
        block_hashes = super().mine_blocks(num_blocks, coinbase)
        self._changed()
        return block_hashes

    def apply_withdrawals(self, withdrawals_list) -> None:
        super().apply_withdrawals(withdrawals_list)
        self._changed()

    def revert_to_snapshot(self, snapshot) -> None:
        super().revert_to_snapshot(snapshot)
        self._changed()

    def _changed(self) -> None:
        if self.on_block is not None:
            self.on_block(self.database)


CALL_STIPEND = 2300  # the gas a value-bearing call hands its callee on top of what it forwards


def estimate_gas(state, transaction) -> int:
    """The gas `transaction` needs, found as geth first tries it: one run with the block's gas limit, then one with
    what that run spent before refunds, plus a call's stipend, times 64/63 (what a call must keep back); py-evm's
    binary search (about a dozen runs, each checking every signature a round record holds) only when that fails."""
    computation = _run_with_gas(state, transaction, state.gas_limit)
    if computation.is_error:
        raise computation.error
    spent = state.gas_limit - computation.get_gas_remaining()
    if spent <= transaction.intrinsic_gas:
        return transaction.intrinsic_gas
    enough = min(state.gas_limit, (spent + CALL_STIPEND) * 64 // 63)
    if not _run_with_gas(state, transaction, enough).is_error:
        return enough
    return binary_gas_search_intrinsic_tolerance(state, transaction)


def _run_with_gas(state, transaction, gas: int):
    """The computation of `transaction` given `gas` (priced at zero), the state left as it was."""
    snapshot = state.snapshot()
    try:
        return state.apply_transaction(SpoofTransaction(transaction, gas=gas, gas_price=0))
    finally:
        state.revert(snapshot)


class DurableChain:
    """A py-evm chain saved to `path` after every block, locked against a second writer until closed."""

    def __init__(self, path: Path, num_accounts: int, gas_limit: int | None = None):
        self.path = Path(path)
        self.lock = StateLock(self.path, "embedded chain")
        self.lock.acquire()
        try:
            saved = read_chain_file(self.path) if self.path.exists() else None
            if saved is not None:
                _say_dropped(self.path, saved, "(the run stopped while writing it); reopened at the block before it")
            self.backend = _backend_over(self.path, num_accounts, saved, on_block=self._save, gas_limit=gas_limit)
            # the whole database once (for a new chain its genesis block, so a reopened chain has the same one), then
            # what each block changes
            self.end = write_chain_file(self.path, self.backend.chain.chain_id, self.backend.database)
            self.backend.database.mark_saved()
        except BaseException:
            self.lock.release()
            raise

    def web3(self) -> Web3:
        return _web3(self.backend)

    def close(self) -> None:
        """Release the file; blocks mined after this raise a ChainError instead of being saved."""
        self.lock.release()

    def _save(self, database: ChangedKeys) -> None:
        if self.lock.fd is None:
            raise ChainError(
                f"embedded chain {self.path}: closed, so this block is not saved; "
                "open the run's chain again with chain.backends.connect"
            )
        changes = database.changes()
        if changes:
            self.end = append_segment(self.path, self.end, changes)
            database.mark_saved()


def in_memory_web3(num_accounts: int, gas_limit: int | None = None) -> Web3:
    """A fresh embedded chain that is never saved (tests, throw-away ledgers)."""
    return _web3(DurablePyEVMBackend(num_accounts, gas_limit=gas_limit))


def open_embedded_export(path: str | Path) -> Web3:
    """A read-only Web3 on a saved embedded chain (for explorers): the file is read once, never
    written, and needs no lock; transactions sent to it stay in this process's memory."""
    saved = read_chain_file(Path(path))
    _say_dropped(path, saved, "(or one a run is writing now); read up to the block before it")
    return _web3(_backend_over(Path(path), 1, saved))


def _say_dropped(path: str | Path, saved: SavedChain, then: str) -> None:
    """Log the bytes at the end of the file that were left out of `saved`, if any."""
    if saved.dropped:
        log.warning(
            "embedded chain %s: its last %d bytes were a block whose save did not finish %s", path, saved.dropped, then
        )


def _web3(backend: PyEVMBackend) -> Web3:
    return Web3(EthereumTesterProvider(EthereumTester(backend)))


def _backend_over(
    path: Path, num_accounts: int, saved: SavedChain | None, on_block=None, gas_limit: int | None = None
) -> DurablePyEVMBackend:
    """The backend over a saved chain, or over a new chain when `saved` is None."""
    from eth.exceptions import CanonicalHeadNotFound

    chain_id, database = (saved.chain_id, saved.database) if saved else (None, None)
    try:
        backend = DurablePyEVMBackend(num_accounts, database, on_block, gas_limit)
    except CanonicalHeadNotFound:
        raise _corrupt(path, "it holds no chain head") from None
    if saved is not None and chain_id != backend.chain.chain_id:
        raise _corrupt(path, f"it holds chain id {chain_id}, this eth-tester makes {backend.chain.chain_id}")
    return backend


# --- the file ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedChain:
    chain_id: int
    database: Database
    dropped: int = 0  # bytes at the file's end that were a block whose save did not finish


@dataclass(frozen=True)
class FileEnd:
    """Where the file's last whole snapshot or segment ends, and its digest, which the next segment's covers."""

    length: int
    digest: bytes


def encode_chain_database(chain_id: int, database: Database) -> bytes:
    """A snapshot: the whole database, as the file starts."""
    parts = [MAGIC, _HEADER.pack(chain_id, len(database))]
    for key, value in database.items():
        parts += (_ENTRY.pack(len(key), len(value)), key, value)
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


def encode_segment(previous_digest: bytes, changes: dict[bytes, bytes | None]) -> bytes:
    """The keys one block changed (None: deleted), framed by their length (with its CRC-32, so a damaged length is
    told from a save cut short) and chained to the digest of what the file holds before them."""
    parts = [_COUNT.pack(len(changes))]
    for key, value in changes.items():
        parts += (_ENTRY.pack(len(key), DELETED if value is None else len(value)), key, value or b"")
    payload = b"".join(parts)
    length = _COUNT.pack(len(payload))
    segment = _FRAME.pack(len(payload), zlib.crc32(length)) + payload
    return segment + hashlib.sha256(previous_digest + segment).digest()


class _Short(Exception):
    """The data ends inside an entry."""


def _read_entries(data: bytes, offset: int, count: int, into: dict, end: int | None = None) -> int:
    """`count` entries from `offset` (none past `end`, by default the data's end) into `into` (a deleted key's value
    None); the offset after them."""
    view, end = memoryview(data), len(data) if end is None else end
    for _ in range(count):
        if offset + _ENTRY.size > end:
            raise _Short
        key_size, value_size = _ENTRY.unpack_from(data, offset)
        offset += _ENTRY.size
        stored = 0 if value_size == DELETED else value_size
        if offset + key_size + stored > end:
            raise _Short
        key = bytes(view[offset : offset + key_size])
        into[key] = None if value_size == DELETED else bytes(view[offset + key_size : offset + key_size + stored])
        offset += key_size + stored
    return offset


class _Torn(Exception):
    """The file ends inside a segment: a save that did not finish."""


class _Damaged(Exception):
    """A segment that is not what was written."""


def _read_segment(data: bytes, offset: int, previous_digest: bytes) -> tuple[dict[bytes, bytes | None], int]:
    """The changes of the segment at `offset`, and where it ends (its digest included)."""
    body = offset + _FRAME.size
    if body > len(data):
        raise _Torn
    length, check = _FRAME.unpack_from(data, offset)
    if zlib.crc32(data[offset : offset + _COUNT.size]) != check:
        raise _Torn if not any(data[offset:]) else _Damaged  # zeros: a crash extended the file, the data not written
    end = body + length
    if end + _DIGEST_SIZE > len(data):
        raise _Torn
    if hashlib.sha256(previous_digest + data[offset:end]).digest() != data[end : end + _DIGEST_SIZE]:
        raise _Torn if end + _DIGEST_SIZE == len(data) else _Damaged  # the last one's pages may not all be written
    changes: dict[bytes, bytes | None] = {}
    try:
        (count,) = _COUNT.unpack_from(data, body)
        if _read_entries(data, body + _COUNT.size, count, changes, end) != end:
            raise _Damaged
    except (struct.error, _Short):
        raise _Damaged from None
    return changes, end + _DIGEST_SIZE


def decode_chain_database(data: bytes, path: Path) -> SavedChain:
    """The snapshot and every whole segment after it; a last segment cut short or damaged is dropped (counted)."""
    if not data.startswith((MAGIC, MAGIC_V1)):
        raise _corrupt(path, "it is truncated" if MAGIC.startswith(data) else "it is not an FLB embedded chain file")
    database: Database = {}
    try:
        chain_id, count = _HEADER.unpack_from(data, len(MAGIC))
        offset = _read_entries(data, len(MAGIC) + _HEADER.size, count, database)
    except (struct.error, _Short):
        raise _corrupt(path, "it is truncated or damaged (checksum mismatch)") from None
    digest = data[offset : offset + _DIGEST_SIZE]
    if hashlib.sha256(memoryview(data)[:offset]).digest() != digest:
        raise _corrupt(path, "it is truncated or damaged (checksum mismatch)")
    offset += _DIGEST_SIZE
    if data.startswith(MAGIC_V1) and offset != len(data):
        raise _corrupt(path, "its entries do not fill it")
    while offset < len(data):
        try:
            changes, end = _read_segment(data, offset, digest)
        except _Torn:
            return SavedChain(chain_id, database, dropped=len(data) - offset)
        except _Damaged:
            raise _corrupt(path, f"the block saved at byte {offset} is damaged (checksum mismatch)") from None
        digest, offset = data[end - _DIGEST_SIZE : end], end
        for key, value in changes.items():
            if value is None:
                database.pop(key, None)
            else:
                database[key] = value
    return SavedChain(chain_id, database)


def read_chain_file(path: Path) -> SavedChain:
    """The saved chain id and py-evm database (a ChainError naming the file when missing or corrupt)."""
    try:
        data = Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise ChainError(
            f"embedded chain {path}: not found; give the {EMBEDDED_CHAIN_FILE} of a run made "
            "with chain.backend embedded (RUN_DIR/chain/)"
        ) from None
    return decode_chain_database(data, Path(path))


def write_chain_file(path: Path, chain_id: int, database: Database) -> FileEnd:
    """Replace `path` atomically with a snapshot of `database`: a crash leaves the old file or the new one."""
    snapshot = encode_chain_database(chain_id, database)
    write_atomic(path, snapshot)
    return FileEnd(len(snapshot), snapshot[-_DIGEST_SIZE:])


def append_segment(path: Path, end: FileEnd, changes: dict[bytes, bytes | None]) -> FileEnd:
    """Write `changes` as one segment at `end` (cutting off what a save that failed left there), flushed to disk."""
    segment = encode_segment(end.digest, changes)
    with open(path, "r+b") as handle:
        handle.truncate(end.length)
        handle.seek(end.length)
        handle.write(segment)
        handle.flush()
        os.fsync(handle.fileno())
    return FileEnd(end.length + len(segment), segment[-_DIGEST_SIZE:])


def _corrupt(path: Path, why: str) -> ChainError:
    return ChainError(
        f"embedded chain {path}: unreadable ({why}); restore it from a backup, or move it away "
        "to start a new chain (the ledger then sends the run's records again)"
    )
