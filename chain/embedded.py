"""The embedded chain (py-evm in process), durable: its whole database lives in RUN_DIR/chain/embedded_chain.db.

py-evm keeps every block, transaction, receipt and state trie node in one key/value database.
eth-tester builds it over an in-memory dict; here that dict is filled from the file when it exists
and the file is rewritten atomically (flb.atomic.write_atomic) after every mined block, so a run
killed at any moment leaves the previous block's or the new block's chain, never a torn one.
Blocks are mined one per transaction (eth-tester's auto-mining); the pending block and
eth-tester's own filters and snapshots are not saved.

File format: MAGIC, chain id (u64), entry count (u32), then per entry key length (u32), value
length (u32), key, value; then the SHA-256 of everything before it. The file grows linearly with
the chain (about 1.8 kB per plain transfer)."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from pathlib import Path

from eth.db.atomic import AtomicDB
from eth.db.backends.memory import MemoryDB
from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.backends.pyevm.main import ZERO_ADDRESS
from web3 import EthereumTesterProvider, Web3

from chain.accounts import DEV_HD_PATH, DEV_MNEMONIC
from chain.errors import ChainError
from chain.locks import StateLock
from flb.atomic import write_atomic

EMBEDDED_CHAIN_FILE = "embedded_chain.db"
MAGIC = b"FLB py-evm chain database v1\n"
_HEADER = struct.Struct(">QI")
_ENTRY = struct.Struct(">II")
_DIGEST_SIZE = 32

Database = dict[bytes, bytes]


class DurablePyEVMBackend(PyEVMBackend):
    """eth-tester's py-evm backend over `database` (a new chain when None) that calls `on_block`
    with its database after every change of the canonical chain."""

    def __init__(
        self,
        num_accounts: int,
        database: Database | None = None,
        on_block: Callable[[Database], None] | None = None,
        gas_limit: int | None = None,
    ):
        genesis = self.generate_genesis_state(mnemonic=DEV_MNEMONIC, num_accounts=num_accounts, hd_path=DEV_HD_PATH)
        parameters = self.generate_genesis_params({"gas_limit": gas_limit}) if gas_limit else None
        super().__init__(
            genesis_parameters=parameters, genesis_state=genesis, mnemonic=DEV_MNEMONIC, hd_path=DEV_HD_PATH
        )
        if database is not None:
            # same chain class (chain id, VM schedule) as the fresh genesis chain, over the saved
            # database; its pending block is built on the saved head
            self.chain = type(self.chain)(AtomicDB(MemoryDB(database)))
        self.on_block = on_block

    @property
    def database(self) -> Database:
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


class DurableChain:
    """A py-evm chain saved to `path` after every block, locked against a second writer until closed."""

    def __init__(self, path: Path, num_accounts: int, gas_limit: int | None = None):
        self.path = Path(path)
        self.lock = StateLock(self.path, "embedded chain")
        self.lock.acquire()
        try:
            saved = read_chain_file(self.path) if self.path.exists() else None
            self.backend = _backend_over(self.path, num_accounts, saved, on_block=self._save, gas_limit=gas_limit)
            if saved is None:
                self._save(self.backend.database)  # the genesis block, so a reopened chain has the same one
        except BaseException:
            self.lock.release()
            raise

    def web3(self) -> Web3:
        return _web3(self.backend)

    def close(self) -> None:
        """Release the file; blocks mined after this raise a ChainError instead of being saved."""
        self.lock.release()

    def _save(self, database: Database) -> None:
        if self.lock.fd is None:
            raise ChainError(
                f"embedded chain {self.path}: closed, so this block is not saved; "
                "open the run's chain again with chain.backends.connect"
            )
        write_chain_file(self.path, self.backend.chain.chain_id, database)


def in_memory_web3(num_accounts: int, gas_limit: int | None = None) -> Web3:
    """A fresh embedded chain that is never saved (tests, throw-away ledgers)."""
    return _web3(DurablePyEVMBackend(num_accounts, gas_limit=gas_limit))


def open_embedded_export(path: str | Path) -> Web3:
    """A read-only Web3 on a saved embedded chain (for explorers): the file is read once, never
    written, and needs no lock; transactions sent to it stay in this process's memory."""
    return _web3(_backend_over(Path(path), 1, read_chain_file(Path(path))))


def _web3(backend: PyEVMBackend) -> Web3:
    return Web3(EthereumTesterProvider(EthereumTester(backend)))


def _backend_over(
    path: Path, num_accounts: int, saved: tuple[int, Database] | None, on_block=None, gas_limit: int | None = None
) -> DurablePyEVMBackend:
    """The backend over a saved (chain id, database), or over a new chain when `saved` is None."""
    from eth.exceptions import CanonicalHeadNotFound

    chain_id, database = saved or (None, None)
    try:
        backend = DurablePyEVMBackend(num_accounts, database, on_block, gas_limit)
    except CanonicalHeadNotFound:
        raise _corrupt(path, "it holds no chain head") from None
    if saved is not None and chain_id != backend.chain.chain_id:
        raise _corrupt(path, f"it holds chain id {chain_id}, this eth-tester makes {backend.chain.chain_id}")
    return backend


# --- the file -------------------------------------------------------------------------------


def encode_chain_database(chain_id: int, database: Database) -> bytes:
    parts = [MAGIC, _HEADER.pack(chain_id, len(database))]
    for key, value in database.items():
        parts += (_ENTRY.pack(len(key), len(value)), key, value)
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


def decode_chain_database(data: bytes, path: Path) -> tuple[int, Database]:
    body, digest = data[:-_DIGEST_SIZE], data[-_DIGEST_SIZE:]
    if not data.startswith(MAGIC):
        raise _corrupt(path, "it is truncated" if MAGIC.startswith(data) else "it is not an FLB embedded chain file")
    if len(data) < len(MAGIC) + _HEADER.size + _DIGEST_SIZE or hashlib.sha256(body).digest() != digest:
        raise _corrupt(path, "it is truncated or damaged (checksum mismatch)")
    chain_id, count = _HEADER.unpack_from(body, len(MAGIC))
    offset = len(MAGIC) + _HEADER.size
    database: Database = {}
    view = memoryview(body)
    for _ in range(count):
        key_size, value_size = _ENTRY.unpack_from(body, offset)
        offset += _ENTRY.size
        database[bytes(view[offset : offset + key_size])] = bytes(
            view[offset + key_size : offset + key_size + value_size]
        )
        offset += key_size + value_size
    if offset != len(body):
        raise _corrupt(path, "its entries do not fill it")
    return chain_id, database


def read_chain_file(path: Path) -> tuple[int, Database]:
    """The saved chain id and py-evm database (a ChainError naming the file when missing or corrupt)."""
    try:
        data = Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise ChainError(
            f"embedded chain {path}: not found; give the {EMBEDDED_CHAIN_FILE} of a run made "
            "with chain.backend embedded (RUN_DIR/chain/)"
        ) from None
    return decode_chain_database(data, Path(path))


def write_chain_file(path: Path, chain_id: int, database: Database) -> None:
    """Replace `path` atomically: a crash leaves the old file or the new one."""
    write_atomic(path, encode_chain_database(chain_id, database))


def _corrupt(path: Path, why: str) -> ChainError:
    return ChainError(
        f"embedded chain {path}: unreadable ({why}); restore it from a backup, or move it away "
        "to start a new chain (the ledger then sends the run's records again)"
    )
