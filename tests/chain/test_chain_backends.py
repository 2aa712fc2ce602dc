"""Chain nodes whose lifetime and persistence are the run's: a durable embedded chain, an anvil that
dies with its run and never shares its state file. Plain ETH transfers only (no contract)."""

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chain.accounts import dev_accounts
from chain.anvil import AnvilProcess
from chain.backends import connect, embedded_node
from chain.embedded import EMBEDDED_CHAIN_FILE, open_embedded_export
from chain.errors import ChainError
from chain.locks import StateLock
from flb.config import ChainSettings

pytestmark = pytest.mark.chain
REPO = Path(__file__).resolve().parents[2]


RECIPIENT = "0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB"  # an address nobody holds the key of


def transfer(w3, sender, to, value):
    """A signed EIP-1559 value transfer sent raw; returns its receipt."""
    signed = sender.sign_transaction(
        {
            "to": to,
            "value": value,
            "gas": 21000,
            "maxFeePerGas": 3 * 10**9,
            "maxPriorityFeePerGas": 10**9,
            "nonce": w3.eth.get_transaction_count(sender.address),
            "chainId": w3.eth.chain_id,
        }
    )
    return w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction), timeout=30)


# init code of a contract with no code and storage slot 0 = 42: PUSH1 0x2a PUSH1 0x00 SSTORE STOP
STORE_42 = "0x602a60005500"


def send_transfers(node, count):
    """`count` raw transfers, one eth-tester-signed transfer, one raw contract creation: their receipts."""
    w3, accounts = node.w3, node.accounts
    receipts = [transfer(w3, accounts.clients[i % 2], accounts.admin.address, 1000 + i) for i in range(count)]
    tx_hash = w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": accounts.clients[0].address, "value": 7})
    signed = accounts.admin.sign_transaction(
        {
            "data": STORE_42,
            "value": 0,
            "gas": 100_000,
            "gasPrice": 3 * 10**9,
            "chainId": w3.eth.chain_id,
            "nonce": w3.eth.get_transaction_count(accounts.admin.address),
        }
    )
    creation = w3.eth.send_raw_transaction(signed.raw_transaction)
    return receipts + [w3.eth.wait_for_transaction_receipt(tx) for tx in (tx_hash, creation)]


def chain_view(w3, accounts):
    head = w3.eth.block_number
    blocks = [w3.eth.get_block(number) for number in range(head + 1)]
    receipts = [dict(w3.eth.get_transaction_receipt(tx)) for block in blocks for tx in block["transactions"]]
    contracts = [receipt["contractAddress"] for receipt in receipts if receipt["contractAddress"]]
    return {
        "chain_id": w3.eth.chain_id,
        "head": head,
        "block_hashes": [block["hash"] for block in blocks],
        "receipts": receipts,
        "storage": [w3.eth.get_storage_at(address, 0) for address in contracts],
        "balances": [w3.eth.get_balance(a.address) for a in (accounts.admin, *accounts.clients)],
        "nonces": [w3.eth.get_transaction_count(a.address) for a in (accounts.admin, *accounts.clients)],
    }


def kill_child(child):
    child.kill()  # SIGKILL: no handler, no atexit, no finally runs in the run
    child.wait()


@pytest.fixture
def chain_file(tmp_path):
    return tmp_path / "chain" / EMBEDDED_CHAIN_FILE


# --- the embedded chain ---------------------------------------------------------------------


def test_reopened_embedded_chain_holds_the_same_blocks_receipts_and_balances(chain_file):
    first = embedded_node(chain_file, num_clients=2)
    send_transfers(first, 5)
    before = chain_view(first.w3, first.accounts)
    first.stop()
    second = embedded_node(chain_file, num_clients=2)
    assert before["head"] == 7 and len(before["receipts"]) == 7 and before["storage"] == [(42).to_bytes(32, "big")]
    assert chain_view(second.w3, second.accounts) == before
    second.stop()


def test_reopened_embedded_chain_continues_with_the_next_block(chain_file):
    first = embedded_node(chain_file, num_clients=2)
    send_transfers(first, 3)
    head = first.w3.eth.block_number
    first.stop()
    second = embedded_node(chain_file, num_clients=2)
    receipt = transfer(second.w3, second.accounts.clients[0], second.accounts.admin.address, 1)
    assert receipt["blockNumber"] == head + 1 and receipt["status"] == 1
    assert second.w3.eth.get_block(head + 1)["parentHash"] == second.w3.eth.get_block(head)["hash"]
    second.stop()
    assert open_embedded_export(chain_file).eth.block_number == head + 1


def test_connect_keeps_the_embedded_chain_in_the_run_directory(tmp_path):
    node = connect(ChainSettings(), tmp_path)
    transfer(node.w3, node.accounts.admin, RECIPIENT, 1)
    node.stop()
    assert open_embedded_export(tmp_path / "chain" / EMBEDDED_CHAIN_FILE).eth.block_number == 1
    assert not list((tmp_path / "chain").glob("*.tmp"))  # every save renamed its temporary file


def test_views_still_answer_once_full_blocks_raised_the_base_fee_past_1_gwei(tmp_path):
    """eth-tester prices a view call at 1 gwei unless told otherwise: after a run's registration batches filled
    block after block, the base fee passes it and every view (the ledger's checks) would fail."""
    from eth_account import Account

    from chain.contract import flb_contract
    from chain.deployment import deploy
    from chain.transact import send_signed, sign_call

    node = embedded_node(tmp_path / EMBEDDED_CHAIN_FILE, gas_limit=5_000_000)
    w3, admin = node.w3, node.accounts.admin
    contract = flb_contract(w3, deploy(w3, admin)["contractAddress"])
    registered = 0
    while w3.eth.get_block("latest")["baseFeePerGas"] <= 10**9:
        batch = [Account.from_key((registered + i + 1).to_bytes(32, "big")).address for i in range(75)]
        send_signed(
            w3, sign_call(w3, admin, contract.functions.registerClients(batch), "registration", gas=4_900_000), 60
        )
        registered += len(batch)
    assert contract.functions.clientCount().call() == registered
    node.stop()


def test_every_mined_block_is_on_disk_before_the_call_returns(chain_file):
    node = embedded_node(chain_file, num_clients=2)  # never stopped: as if the process were killed now
    receipts = send_transfers(node, 2)
    saved = open_embedded_export(chain_file)
    assert saved.eth.block_number == receipts[-1]["blockNumber"]
    assert saved.eth.get_transaction_receipt(receipts[-1]["transactionHash"])["status"] == 1
    node.stop()


def test_embedded_chain_killed_while_mining_reopens_at_a_block_it_reported(tmp_path):
    chain_file = tmp_path / EMBEDDED_CHAIN_FILE
    child = subprocess.Popen(
        [sys.executable, "-c", _MINE_FOREVER, str(chain_file)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        reported = [int(child.stdout.readline()) for _ in range(8)]
    finally:
        kill_child(child)
    node = embedded_node(chain_file, num_clients=2)
    assert node.w3.eth.block_number >= reported[-1]
    assert transfer(node.w3, node.accounts.clients[0], node.accounts.admin.address, 1)["status"] == 1
    node.stop()


_MINE_FOREVER = """
import sys
from chain.backends import embedded_node
node = embedded_node(sys.argv[1], num_clients=2)
while True:
    account = node.accounts.clients[0]
    nonce = node.w3.eth.get_transaction_count(account.address)
    tx = account.sign_transaction({"to": node.accounts.admin.address, "value": 1, "gas": 21000, "gasPrice": 3 * 10**9,
                                   "nonce": nonce, "chainId": node.w3.eth.chain_id})
    node.w3.eth.send_raw_transaction(tx.raw_transaction)
    print(node.w3.eth.block_number, flush=True)
"""


@pytest.mark.parametrize(
    "damage", ["truncated snapshot", "flipped byte", "damaged block", "damaged block length", "empty", "foreign"]
)
def test_damaged_embedded_chain_file_is_a_one_line_chain_error(chain_file, damage):
    node = embedded_node(chain_file, num_clients=2)
    snapshot = chain_file.stat().st_size  # the whole database as opened; each block's changes follow it
    send_transfers(node, 1)
    node.stop()
    data = chain_file.read_bytes()
    damaged = {
        "truncated snapshot": data[: snapshot // 2],
        "flipped byte": data[:100] + bytes([data[100] ^ 1]) + data[101:],
        "damaged block": data[: snapshot + 10] + bytes([data[snapshot + 10] ^ 1]) + data[snapshot + 11 :],
        "damaged block length": data[: snapshot + 2] + bytes([data[snapshot + 2] ^ 1]) + data[snapshot + 3 :],
        "empty": b"",
        "foreign": b'{"block": 1}',
    }[damage]
    chain_file.write_bytes(damaged)
    for open_chain in (lambda: embedded_node(chain_file, num_clients=2), lambda: open_embedded_export(chain_file)):
        with pytest.raises(ChainError) as error:
            open_chain()
        assert str(chain_file) in str(error.value) and "\n" not in str(error.value)
        assert "move it away" in str(error.value)


def test_a_block_whose_save_was_cut_short_is_dropped_and_the_chain_goes_on_from_the_one_before(chain_file, caplog):
    """A save that did not finish (the run killed while appending, a full disk) leaves part of a block at the end of
    the file: readers open the chain at the block before it, and the writer says so, then mines on from there."""
    node = embedded_node(chain_file, num_clients=2)
    transfer(node.w3, node.accounts.clients[0], node.accounts.admin.address, 1)
    head, before_last = node.w3.eth.block_number, chain_file.stat().st_size
    transfer(node.w3, node.accounts.clients[0], node.accounts.admin.address, 2)
    node.stop()
    data = chain_file.read_bytes()
    zeros = data[:before_last] + bytes(len(data) - before_last)  # the file's length written, not its data
    for cut in (data[: before_last + 20], data[:-1], data[:-40] + bytes(40), zeros):  # in an entry, in its digest
        chain_file.write_bytes(cut)
        caplog.clear()
        with caplog.at_level("WARNING", "chain.embedded"):
            assert open_embedded_export(chain_file).eth.block_number == head
        assert f"its last {len(cut) - before_last} bytes were a block whose save did not finish" in caplog.text
        assert "read up to the block before it" in caplog.text
        caplog.clear()
        with caplog.at_level("WARNING", "chain.embedded"):
            node = embedded_node(chain_file, num_clients=2)
        assert node.w3.eth.block_number == head
        assert f"its last {len(cut) - before_last} bytes were a block whose save did not finish" in caplog.text
        assert transfer(node.w3, node.accounts.clients[1], node.accounts.admin.address, 3)["blockNumber"] == head + 1
        node.stop()
        assert open_embedded_export(chain_file).eth.block_number == head + 1


def test_saving_a_block_appends_what_it_changed_and_never_rewrites_the_chain(chain_file, monkeypatch):
    """Per block the file gets the keys that block changed (a few kB for a transfer), however long the chain is:
    the whole database is written once, when the chain is opened."""
    import chain.embedded

    snapshots, appended = [], []
    write, append = chain.embedded.write_chain_file, chain.embedded.append_segment
    monkeypatch.setattr(chain.embedded, "write_chain_file", lambda *a: snapshots.append(a[0]) or write(*a))

    def recording_append(path, end, changes):
        appended.append(sum(len(k) + len(v or b"") for k, v in changes.items()))
        return append(path, end, changes)

    monkeypatch.setattr(chain.embedded, "append_segment", recording_append)
    node = embedded_node(chain_file, num_clients=2)
    for i in range(12):
        transfer(node.w3, node.accounts.clients[i % 2], node.accounts.admin.address, 1 + i)
    node.stop()
    assert snapshots == [chain_file] and len(appended) == 12
    assert max(appended) < 4000 and max(appended[6:]) <= 1.1 * max(appended[:6])  # no more for the 12th than the 1st
    assert open_embedded_export(chain_file).eth.block_number == 12


def test_a_chain_file_of_version_1_opens_and_is_written_on_as_version_2(chain_file):
    """Runs made before the file had segments saved a snapshot alone (MAGIC_V1): they resume, and open in the
    explorer, as they were."""
    import hashlib

    from chain.embedded import MAGIC, MAGIC_V1, encode_chain_database, read_chain_file

    node = embedded_node(chain_file, num_clients=2)
    send_transfers(node, 2)
    head = node.w3.eth.block_number
    node.stop()
    saved = read_chain_file(chain_file)
    body = MAGIC_V1 + encode_chain_database(saved.chain_id, saved.database)[len(MAGIC) : -32]
    chain_file.write_bytes(body + hashlib.sha256(body).digest())
    assert open_embedded_export(chain_file).eth.block_number == head
    node = embedded_node(chain_file, num_clients=2)
    assert transfer(node.w3, node.accounts.clients[0], node.accounts.admin.address, 1)["blockNumber"] == head + 1
    node.stop()
    assert chain_file.read_bytes().startswith(MAGIC)
    assert open_embedded_export(chain_file).eth.block_number == head + 1


# init code that deploys a contract which reverts unless it is called with at least 1,000,000 gas left:
# GAS PUSH3 1000000 LT PUSH1 13 JUMPI PUSH1 0 DUP1 REVERT JUMPDEST STOP
NEEDS_A_MILLION = "0x600f600c600039600f6000f3" + "5a620f424010600d57600080fd5b00"
# init code that deploys a contract which stores 42 in slot 0 when called: PUSH1 42 PUSH1 0 SSTORE STOP
STORES_42_WHEN_CALLED = "0x6006600c60003960066000f3" + "602a60005500"


def test_embedded_gas_estimates_run_a_call_twice_and_search_only_when_that_is_not_enough(tmp_path, monkeypatch):
    """The estimate (every ledger record's) runs the transaction with the block's gas limit, then with what it spent
    plus a call's stipend times 64/63; a call that needs more gas than it spends still gets an estimate it succeeds
    with (py-evm's binary search), and a plain transfer its exact 21,000."""
    import chain.embedded

    runs = []
    run = chain.embedded._run_with_gas
    monkeypatch.setattr(chain.embedded, "_run_with_gas", lambda *a: runs.append(a[2]) or run(*a))
    node = embedded_node(tmp_path / EMBEDDED_CHAIN_FILE, num_clients=2)
    w3, sender = node.w3, node.accounts.clients[0]
    assert w3.eth.estimate_gas({"from": sender.address, "to": RECIPIENT, "value": 1}) == 21000
    stores = deploy_code(w3, node.accounts.admin, STORES_42_WHEN_CALLED)
    runs.clear()
    estimate = w3.eth.estimate_gas({"from": sender.address, "to": stores, "data": "0x"})
    assert len(runs) == 2 and estimate == runs[1]
    picky = deploy_code(w3, node.accounts.admin, NEEDS_A_MILLION)
    estimate = w3.eth.estimate_gas({"from": sender.address, "to": picky})
    assert estimate > 1_000_000
    for gas, status in ((estimate, 1), (1_000_000, 0)):
        signed = sender.sign_transaction(
            {
                "to": picky,
                "gas": gas,
                "maxFeePerGas": 3 * 10**9,
                "maxPriorityFeePerGas": 10**9,
                "nonce": w3.eth.get_transaction_count(sender.address),
                "chainId": w3.eth.chain_id,
            }
        )
        receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction))
        assert receipt["status"] == status
    node.stop()


def test_keys_and_the_embedded_chains_ecrecover_use_libsecp256k1():
    """coincurve (requirements.txt) makes eth-keys sign and recover in C: a round record's signature checks cost
    the embedded chain milliseconds, not the ~60 ms each of the pure-Python backend eth-keys falls back to."""
    from eth_keys import KeyAPI
    from eth_keys.backends import CoinCurveECCBackend

    assert isinstance(KeyAPI().backend, CoinCurveECCBackend)


def deploy_code(w3, sender, init_code: str) -> str:
    signed = sender.sign_transaction(
        {
            "data": init_code,
            "gas": 200_000,
            "gasPrice": 3 * 10**9,
            "chainId": w3.eth.chain_id,
            "nonce": w3.eth.get_transaction_count(sender.address),
        }
    )
    return w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction))["contractAddress"]


def test_missing_embedded_export_is_a_one_line_chain_error(tmp_path):
    with pytest.raises(ChainError, match=r"embedded_chain\.db: not found") as error:
        open_embedded_export(tmp_path / EMBEDDED_CHAIN_FILE)
    assert "\n" not in str(error.value)


def test_export_opener_never_writes_the_file(chain_file):
    node = embedded_node(chain_file, num_clients=2)
    send_transfers(node, 2)
    node.stop()
    (chain_file.parent / (chain_file.name + ".lock")).unlink()
    data, stat, files = chain_file.read_bytes(), chain_file.stat(), sorted(chain_file.parent.iterdir())
    saved = open_embedded_export(chain_file)
    reader = dev_accounts(2).clients[0]
    assert transfer(saved, reader, reader.address, 1)["status"] == 1  # mined in memory only
    assert chain_file.read_bytes() == data and sorted(chain_file.parent.iterdir()) == files  # no lock, no temp file
    assert (chain_file.stat().st_mtime_ns, chain_file.stat().st_ino) == (stat.st_mtime_ns, stat.st_ino)


def test_export_opener_reads_a_chain_a_live_node_is_writing(chain_file):
    node = embedded_node(chain_file, num_clients=2)
    send_transfers(node, 1)
    assert open_embedded_export(chain_file).eth.block_number == node.w3.eth.block_number
    node.stop()


def test_second_embedded_node_on_the_same_file_is_refused_until_the_first_stops(chain_file):
    first = embedded_node(chain_file, num_clients=2)
    with pytest.raises(ChainError, match=re.escape(f"{chain_file}: in use by process {os.getpid()}")) as error:
        embedded_node(chain_file, num_clients=2)
    assert "\n" not in str(error.value)
    first.stop()
    embedded_node(chain_file, num_clients=2).stop()


def test_a_stopped_embedded_node_does_not_save_new_blocks(chain_file):
    node = embedded_node(chain_file, num_clients=2)
    node.stop()
    with pytest.raises(ChainError, match="closed"):
        transfer(node.w3, node.accounts.clients[0], node.accounts.admin.address, 1)
    assert open_embedded_export(chain_file).eth.block_number == 0


def test_in_memory_embedded_node_writes_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    node = embedded_node(num_clients=2)
    transfer(node.w3, node.accounts.clients[0], node.accounts.admin.address, 1)
    assert not list(tmp_path.iterdir())


# --- anvil ----------------------------------------------------------------------------------

_START_ANVIL_AND_WAIT = """
import sys, time
from chain.accounts import dev_accounts
from chain.anvil import AnvilProcess
anvil = AnvilProcess(sys.argv[1], num_accounts=3)
anvil.start()
if len(sys.argv) > 2:
    from web3 import Web3
    w3, accounts = Web3(Web3.HTTPProvider(anvil.url)), dev_accounts(2)
    for value in range(int(sys.argv[2])):
        tx = accounts.clients[0].sign_transaction({"to": accounts.admin.address, "value": value + 1, "gas": 21000,
            "gasPrice": 3 * 10**9, "nonce": value, "chainId": w3.eth.chain_id})
        w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(tx.raw_transaction))
print(anvil.process.pid, anvil.port, flush=True)
time.sleep(600)
"""


@pytest.fixture
def start_anvil_in_child():
    """start(state_file, transfers=None): a Python process (a run) that starts anvil, sends `transfers`
    and waits; returns it and anvil's pid. Runs left alive are killed at the end of the test."""
    children = []

    def start(state_file, transfers=None):
        args = [str(state_file)] + ([str(transfers)] if transfers is not None else [])
        child = subprocess.Popen(
            [sys.executable, "-c", _START_ANVIL_AND_WAIT, *args], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        children.append(child)
        anvil_pid, _ = child.stdout.readline().split()
        return child, int(anvil_pid)

    yield start
    for child in children:
        kill_child(child)


def is_running(pid: int) -> bool:
    """Whether any thread of process `pid` is still alive (a zombie leader may wait for its threads)."""
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
                return True
        except FileNotFoundError:
            continue
    return False


def wait_until_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_running(pid):
            return True
        time.sleep(0.05)
    return False


def block_number(anvil):
    from web3 import Web3

    return Web3(Web3.HTTPProvider(anvil.url)).eth.block_number


@pytest.mark.anvil
def test_anvil_dies_when_its_run_is_killed(tmp_path, start_anvil_in_child):
    child, anvil_pid = start_anvil_in_child(tmp_path / "anvil_state.json")
    assert is_running(anvil_pid)
    kill_child(child)
    assert wait_until_gone(anvil_pid)


@pytest.mark.anvil
def test_anvil_writes_its_state_when_its_run_is_killed(tmp_path, start_anvil_in_child):
    state_file = tmp_path / "anvil_state.json"
    child, _ = start_anvil_in_child(state_file, transfers=3)
    kill_child(child)
    anvil = AnvilProcess(state_file, num_accounts=3)
    anvil.start()  # at once, as a resume would: waits for the old anvil to write its state and exit
    assert block_number(anvil) == 3
    anvil.stop()


@pytest.mark.anvil
def test_anvil_outlives_the_thread_that_started_it(tmp_path):
    anvil = AnvilProcess(tmp_path / "anvil_state.json", num_accounts=3)
    starter = threading.Thread(target=anvil.start)
    starter.start()
    starter.join()
    time.sleep(0.5)  # a parent-death signal tied to the starting thread would have fired by now
    assert anvil.process.poll() is None and block_number(anvil) == 0
    anvil.stop()


@pytest.mark.anvil
def test_second_anvil_on_the_same_state_file_is_refused_until_the_first_stops(tmp_path):
    state_file = tmp_path / "anvil_state.json"
    first = AnvilProcess(state_file, num_accounts=3)
    first.start()
    second = AnvilProcess(state_file, num_accounts=3)
    with pytest.raises(ChainError) as error:
        second.start()
    message = str(error.value)
    assert str(state_file) in message and f"process {os.getpid()} (anvil {first.process.pid})" in message
    assert "\n" not in message and second.process is None
    first.stop()
    second.start()
    assert block_number(second) == 0
    second.stop()


@pytest.mark.anvil
def test_anvil_state_of_a_live_run_is_refused_and_taken_over_once_it_is_killed(tmp_path, start_anvil_in_child):
    state_file = tmp_path / "anvil_state.json"
    child, anvil_pid = start_anvil_in_child(state_file)
    with pytest.raises(ChainError, match=rf"in use by process {child.pid} \(anvil {anvil_pid}\)"):
        AnvilProcess(state_file, num_accounts=3).start()
    kill_child(child)
    assert wait_until_gone(anvil_pid)
    takeover = AnvilProcess(state_file, num_accounts=3)
    takeover.start()  # the dead run's lock file is still there, naming it: taken over
    assert f"process {os.getpid()}" in (tmp_path / "anvil_state.json.lock").read_text()
    takeover.stop()


@pytest.mark.anvil
def test_stale_lock_file_of_a_dead_process_is_taken_over(tmp_path):
    state_file = tmp_path / "anvil_state.json"
    exited = subprocess.Popen(["true"])
    exited.wait()
    (tmp_path / "anvil_state.json.lock").write_text(f"process {exited.pid} (anvil {exited.pid})\n")
    anvil = AnvilProcess(state_file, num_accounts=3)
    anvil.start()
    assert block_number(anvil) == 0
    anvil.stop()


@pytest.mark.anvil
def test_state_written_before_a_stop_is_reloaded_by_the_next_start(tmp_path):
    from web3 import Web3

    state_file = tmp_path / "anvil_state.json"
    first = AnvilProcess(state_file, num_accounts=3)
    first.start()
    w3, accounts = Web3(Web3.HTTPProvider(first.url)), dev_accounts(2)
    for value in (1, 2):
        transfer(w3, accounts.clients[0], accounts.admin.address, value)
    first.stop()
    second = AnvilProcess(state_file, num_accounts=3)
    second.start()
    w3 = Web3(Web3.HTTPProvider(second.url))
    assert w3.eth.block_number == 2 and w3.eth.get_transaction_count(accounts.clients[0].address) == 2
    second.stop()


@pytest.mark.anvil
def test_torn_anvil_state_file_is_a_one_line_chain_error(tmp_path):
    state_file = tmp_path / "anvil_state.json"
    state_file.write_text('{"block": {"number": "0x')
    anvil = AnvilProcess(state_file, num_accounts=3)
    with pytest.raises(ChainError, match="anvil_state.json: not valid JSON") as error:
        anvil.start()
    assert "\n" not in str(error.value) and anvil.process is None
    lock = StateLock(state_file, "anvil state")
    lock.acquire()  # the refused start released the state file
    lock.release()


@pytest.mark.anvil
def test_connect_continues_the_run_directorys_anvil_chain(tmp_path):
    first = connect(ChainSettings(backend="anvil"), tmp_path)
    transfer(first.w3, first.accounts.admin, RECIPIENT, 1)
    first.stop()
    second = connect(ChainSettings(backend="anvil"), tmp_path)
    assert second.w3.eth.block_number == 1 and (tmp_path / "chain" / "anvil_state.json").is_file()
    second.stop()
