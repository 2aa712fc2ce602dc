"""The ledger: the run's contract found again on every reopen, records queued in a durable outbox and sent in the
background, each record sent once, lost records sent again, permanent failures ending the run, no key in any output."""

import json
import logging
import shutil
import time

import pytest
from eth_account import Account
from web3.logs import DISCARD

from chain.contract import flb_contract
from chain.embedded import EMBEDDED_CHAIN_FILE
from chain.errors import ChainError
from chain.outbox import CONFIRMED
from chain.sender import LOST
from chain.transact import send_signed, sign_call
from flb.config import ChainSettings
from flb.errors import RunFailed
from tests.chain.conftest import BUFFERED_ANCHORS, global_digest, register, signed_record, signed_upload

pytestmark = pytest.mark.chain
OUTSIDER = Account.from_key(b"\x07" * 32)  # a key no one registered


def outbox_lines(run_dir):
    return [json.loads(line) for line in (run_dir / "chain" / "outbox.jsonl").read_text().splitlines()]


def submissions(run_dir, entry_id):
    return [line for line in outbox_lines(run_dir) if line["id"] == entry_id and line["status"] == "submitted"]


def record_rounds(ledger, clients, rounds, **kwargs):
    for number in rounds:
        ids = () if number == 0 else (0, 1)
        ledger.record_round(signed_record(ledger.signing_domain, clients, number, client_ids=ids, **kwargs))


def stored_global_digest(ledger, number: int) -> str:
    return bytes(ledger.contract.functions.getRound(number).call()[0]).hex()


def fails_with(ledger, text: str) -> str:
    """The one-line RunFailed the ledger ends the run with once its sender stopped on `text`."""
    deadline = time.monotonic() + 30
    while ledger.sender.fatal_error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(RunFailed, match=text) as failure:
        ledger.check()
    message = str(failure.value)
    assert "\n" not in message
    return message


def test_embedded_ledger_records_registration_uploads_and_rounds(open_run_ledger, clients, tmp_path):
    ledger = open_run_ledger()
    register(ledger, clients)
    ledger.record_data_uploads({0: signed_upload(ledger.signing_domain, clients[0], "01" * 32)})
    record_rounds(ledger, clients, (0, 1))
    assert ledger.wait_until_sent(30)
    functions = ledger.contract.functions
    assert [functions.isClient(a.address).call() for a in (*clients, OUTSIDER)] == [True, True, True, False]
    assert [functions.hasUploaded(c.address, bytes.fromhex("01" * 32)).call() for c in clients] == [True, False, False]
    assert stored_global_digest(ledger, 1) == global_digest(1) and functions.nextRound().call() == 2
    assert ledger.scores() == {0: 1 * 1000 + 10, 1: 0 * 1000 + 11, 2: 0}  # uploads x update bytes + examples
    assert ledger.close() is None
    summary = ledger.summary()
    assert summary["backend"] == "embedded" and summary["pending"] == 0
    assert [tx["record"] for tx in summary["transactions"]] == [
        "deploy",
        "register:0-2",
        "upload:0-0",
        "round:0",
        "round:1",
    ]
    assert all(tx["tx"] for tx in summary["transactions"])
    assert (tmp_path / "chain" / "trail.json").is_file()


def test_record_calls_return_at_once(open_run_ledger, clients):
    ledger = open_run_ledger()
    register(ledger, clients)
    start = time.monotonic()
    record_rounds(ledger, clients, range(6))
    assert time.monotonic() - start < 2.0  # sending takes ~0.1-0.3 s a record; queueing does not wait for it
    assert ledger.wait_until_sent(60)
    assert ledger.contract.functions.nextRound().call() == 6


def test_the_ledger_signs_for_its_own_contract(open_run_ledger):
    ledger = open_run_ledger()
    assert ledger.signing_domain.contract == ledger.contract.address == ledger.deployment["address"]
    assert ledger.signing_domain.chain_id == ledger.node.w3.eth.chain_id
    anchored = bytes(ledger.contract.functions.adapterConfigDigest().call()).hex()
    assert anchored == "c0" * 32


@pytest.mark.parametrize("forgery", ["another key", "another round"])
def test_a_round_the_client_did_not_sign_is_refused_by_the_chain(open_run_ledger, clients, forgery):
    ledger = open_run_ledger()
    register(ledger, clients)
    record_rounds(ledger, clients, (0,))
    forged = {"signers": [clients[0], clients[2]]} if forgery == "another key" else {"signed_round": 2}
    ledger.record_round(signed_record(ledger.signing_domain, clients, 1, **forged))
    message = fails_with(ledger, "BadSignature")
    assert "round 1 record" in message
    assert not ledger.contract.functions.roundExists(1).call()
    assert "BadSignature" in ledger.close()


def test_an_upload_signed_by_another_key_is_refused(open_run_ledger, clients):
    ledger = open_run_ledger()
    register(ledger, clients)
    ledger.record_data_uploads({1: signed_upload(ledger.signing_domain, OUTSIDER, "02" * 32)})
    assert "data upload of client 1" in fails_with(ledger, "BadSignature")
    assert not ledger.contract.functions.hasUploaded(clients[1].address, bytes.fromhex("02" * 32)).call()


def test_a_round_naming_an_unregistered_address_is_refused(open_run_ledger, clients):
    ledger = open_run_ledger()
    register(ledger, clients[:2])
    record_rounds(ledger, clients, (0,))
    outsiders = [clients[0], OUTSIDER]  # the outsider signs its own update correctly, but was never registered
    ledger.record_round(signed_record(ledger.signing_domain, outsiders, 1))
    assert OUTSIDER.address in fails_with(ledger, "NotRegistered")


def test_a_data_digest_another_client_uploaded_first_is_still_recorded_for_its_owner(open_run_ledger, clients):
    """Front-running: client 0 claims client 1's digest first; client 1's own upload of it still goes through."""
    ledger = open_run_ledger()
    register(ledger, clients)
    ledger.record_data_uploads({0: signed_upload(ledger.signing_domain, clients[0], "05" * 32)})
    ledger.record_data_uploads({1: signed_upload(ledger.signing_domain, clients[1], "05" * 32)})
    assert ledger.wait_until_sent(30) and ledger.sender.fatal_error is None
    assert [ledger.outbox.get(f"upload:{i}-{i}").status for i in (0, 1)] == [CONFIRMED, CONFIRMED]
    assert ledger.contract.functions.getUserData(clients[1].address).call() == [bytes.fromhex("05" * 32)]


def test_a_contract_owned_by_another_account_is_refused_at_open(tmp_path, open_run_ledger):
    from chain.backends import connect

    settings = ChainSettings()
    node = connect(settings, tmp_path)  # the run's own chain, where a stranger deployed a contract first
    stranger = Account.from_key(b"\x09" * 32)
    node.w3.eth.send_transaction({"from": node.accounts.admin.address, "to": stranger.address, "value": 10**18})
    call = flb_contract(node.w3).constructor(stranger.address)
    address = send_signed(node.w3, sign_call(node.w3, stranger, call, "deploy"), 30)["contractAddress"]
    node.stop()
    with pytest.raises(ChainError, match=f"owned by {stranger.address}, not by this run's admin"):
        open_run_ledger(ChainSettings(contract_address=address))


def test_reopened_embedded_run_continues_the_same_chain(open_run_ledger, clients, tmp_path):
    first = open_run_ledger()
    register(first, clients)
    ledger_upload = signed_upload(first.signing_domain, clients[0], "0a" * 32)
    first.record_data_uploads({0: ledger_upload})
    record_rounds(first, clients, (0, 1))
    assert first.close() is None
    deployment = json.loads((tmp_path / "chain" / "deployment.json").read_text())

    second = open_run_ledger()
    assert second.deployment == deployment and second.signing_domain == first.signing_domain  # no new deploy
    register(second, clients)  # a resumed run queues its registration and uploads again: nothing is re-sent
    second.record_data_uploads({0: ledger_upload})
    record_rounds(second, clients, (2,))
    assert second.wait_until_sent(30)
    assert [stored_global_digest(second, n) for n in (0, 1, 2)] == [global_digest(n) for n in (0, 1, 2)]
    assert second.scores()[0] == 2 * (1000 + 10)
    for entry_id in ("register:0-2", "upload:0-0", "round:0", "round:1", "round:2"):
        assert len(submissions(tmp_path, entry_id)) == 1
    assert second.node.w3.eth.get_block(deployment["block"])["hash"].hex().removeprefix("0x") == deployment[
        "block_hash"
    ].removeprefix("0x")


def test_a_record_the_chain_lost_is_sent_again_on_reopen(open_run_ledger, clients, tmp_path):
    chain_file = tmp_path / "chain" / EMBEDDED_CHAIN_FILE
    first = open_run_ledger()
    register(first, clients)
    record_rounds(first, clients, (0,))
    assert first.wait_until_sent(30)
    shutil.copyfile(chain_file, tmp_path / "before_round_1.db")
    record_rounds(first, clients, (1,))
    assert first.close() is None
    shutil.copyfile(tmp_path / "before_round_1.db", chain_file)  # the chain rewound: round 1 is gone

    second = open_run_ledger()
    record_rounds(second, clients, (2,))  # sent after round 1: the sender checks the chain before sending anything
    assert second.wait_until_sent(30)
    assert [stored_global_digest(second, n) for n in (1, 2)] == [global_digest(1), global_digest(2)]
    assert LOST in second.outbox.get("round:1").error
    assert len(submissions(tmp_path, "round:1")) == 2
    assert second.close() is None
    trail = json.loads((tmp_path / "chain" / "trail.json").read_text())
    assert [entry["record"] for entry in trail["resent"]] == ["round:1"]


def test_a_chain_without_the_runs_deployment_is_refused(open_run_ledger, clients, tmp_path):
    first = open_run_ledger()
    register(first, clients)
    assert first.close() is None
    (tmp_path / "chain" / EMBEDDED_CHAIN_FILE).unlink()  # a fresh chain would start over at genesis
    with pytest.raises(ChainError, match="not the chain the run started on"):
        open_run_ledger()


def test_quality_scoring_takes_scores_from_metrics(open_run_ledger, clients):
    ledger = open_run_ledger(ChainSettings(scoring="quality"))
    register(ledger, clients)
    record_rounds(ledger, clients, (0,))
    record_rounds(ledger, clients, (1,), metrics={"scores": [0, 42]})
    assert ledger.wait_until_sent(30)
    assert ledger.scores() == {0: 0, 1: 42, 2: 0}


# --- buffered runs (strategy fedbuff) --------------------------------------------------------------------------


def record_buffered_rounds(ledger, clients, starts: dict[int, dict[int, int]]):
    """Rounds given as {round: {client id: start round}}: round 0 and rounds without clients as in any run."""
    for number, started in starts.items():
        ids = sorted(started)
        record = signed_record(
            ledger.signing_domain, clients, number, client_ids=ids, start_rounds=[started[i] for i in ids] or None
        )
        ledger.record_round(record)


def test_a_buffered_run_records_each_updates_start_round(open_run_ledger, clients):
    """Round 2 holds client 2's update started from round 0 (stale by one) beside clients 0 and 1's fresh ones; the
    payload keeps each start beside its client when it sorts them by address, and the chain checks each signature
    against its own start."""
    from chain.records import ROUND, on_chain

    ledger = open_run_ledger(anchors=BUFFERED_ANCHORS)
    functions = ledger.contract.functions
    assert (functions.buffered().call(), functions.maxStaleness().call()) == (True, 1)
    register(ledger, clients)
    record_buffered_rounds(ledger, clients, {0: {}, 1: {0: 0, 1: 0}, 2: {0: 1, 2: 0}})
    assert ledger.wait_until_sent(30) and ledger.sender.fatal_error is None
    payload = ledger.outbox.get("round:2").payload
    by_address = sorted(zip((clients[0].address, clients[2].address), (0, 2), (1, 0)), key=lambda r: int(r[0], 16))
    assert list(zip(payload["clients"], payload["client_ids"], payload["start_rounds"])) == by_address
    assert "start_rounds" not in ledger.outbox.get("round:0").payload
    receipt = ledger.node.w3.eth.get_transaction_receipt(ledger.outbox.get("round:2").tx)
    event = ledger.contract.events.BufferedRoundRecorded().process_receipt(receipt, errors=DISCARD)[0]["args"]
    assert (event["clients"], event["startRounds"]) == (payload["clients"], payload["start_rounds"])
    assert on_chain(ledger.contract, ROUND, payload) is True
    assert "another record" in on_chain(
        ledger.contract, ROUND, {**payload, "start_rounds": payload["start_rounds"][::-1]}
    )
    assert ledger.scores() == {0: 10 + 10, 1: 11, 2: 12}


def test_a_buffered_round_the_chain_lost_is_sent_again(open_run_ledger, clients, tmp_path):
    chain_file = tmp_path / "chain" / EMBEDDED_CHAIN_FILE
    first = open_run_ledger(anchors=BUFFERED_ANCHORS)
    register(first, clients)
    record_buffered_rounds(first, clients, {0: {}, 1: {0: 0}})
    assert first.wait_until_sent(30)
    shutil.copyfile(chain_file, tmp_path / "before_round_2.db")
    record_buffered_rounds(first, clients, {2: {1: 0, 0: 1}})
    assert first.close() is None
    shutil.copyfile(tmp_path / "before_round_2.db", chain_file)  # the chain rewound: round 2 is gone

    second = open_run_ledger(anchors=BUFFERED_ANCHORS)
    record_buffered_rounds(second, clients, {3: {1: 2}})
    assert second.wait_until_sent(30) and second.sender.fatal_error is None
    assert [stored_global_digest(second, n) for n in (2, 3)] == [global_digest(2), global_digest(3)]
    assert LOST in second.outbox.get("round:2").error
    assert len(submissions(tmp_path, "round:2")) == 2
    assert second.close() is None


def test_a_run_reopened_with_other_round_kind_or_staleness_is_refused(open_run_ledger, clients):
    from chain.deployment import RunAnchors

    assert open_run_ledger(anchors=BUFFERED_ANCHORS).close() is None
    for other in (RunAnchors("c0" * 32, "c1" * 32), RunAnchors("c0" * 32, "c1" * 32, max_staleness=2)):
        with pytest.raises(ChainError, match=r"and buffered rounds \(max staleness 1\), not this run's .* and "):
            open_run_ledger(anchors=other)


def test_a_stale_update_past_the_anchored_bound_ends_the_run(open_run_ledger, clients):
    ledger = open_run_ledger(anchors=BUFFERED_ANCHORS)
    register(ledger, clients)
    record_buffered_rounds(ledger, clients, {0: {}, 1: {0: 0}, 2: {}, 3: {1: 0}})  # 3 - 1 - 0 = 2 rounds stale
    assert f"TooStale(client={clients[1].address}, startRound=0)" in fails_with(ledger, "round 3 record")


@pytest.mark.anvil
def test_outbox_keeps_every_record_while_anvil_is_down(open_run_ledger, clients, tmp_path):
    ledger = open_run_ledger(ChainSettings(backend="anvil"))
    register(ledger, clients)
    record_rounds(ledger, clients, (0, 1))
    assert ledger.wait_until_sent(30)
    ledger.node.anvil.stop()
    start = time.monotonic()
    record_rounds(ledger, clients, (2, 3))
    assert time.monotonic() - start < 2.0  # training is not blocked
    assert not ledger.wait_until_sent(1.5)
    assert ledger.sender.fatal_error is None
    ledger.node.anvil.start()  # same port, state reloaded from run_dir/chain/anvil_state.json
    assert ledger.wait_until_sent(30)
    for number in (1, 2, 3):
        assert stored_global_digest(ledger, number) == global_digest(number)
        assert len(submissions(tmp_path, f"round:{number}")) == 1
    assert ledger.close() is None


@pytest.mark.anvil
def test_a_record_the_node_lost_while_the_sender_was_idle_is_sent_again(open_run_ledger, clients, tmp_path):
    from chain.backends import ANVIL_STATE_FILE

    ledger = open_run_ledger(ChainSettings(backend="anvil"))
    state = tmp_path / "chain" / ANVIL_STATE_FILE
    register(ledger, clients)
    record_rounds(ledger, clients, (0,))
    assert ledger.wait_until_sent(30)
    ledger.node.anvil.stop()  # anvil writes its state on SIGTERM
    shutil.copyfile(state, tmp_path / "before_round_1.json")
    ledger.node.anvil.start()
    record_rounds(ledger, clients, (1,))
    assert ledger.wait_until_sent(30)
    ledger.node.anvil.stop()
    shutil.copyfile(tmp_path / "before_round_1.json", state)
    ledger.node.anvil.start()  # between two records: no failed request tells the sender
    record_rounds(ledger, clients, (2,))
    assert ledger.wait_until_sent(30) and ledger.sender.fatal_error is None
    assert [stored_global_digest(ledger, n) for n in (1, 2)] == [global_digest(1), global_digest(2)]
    assert LOST in ledger.outbox.get("round:1").error
    assert ledger.close() is None


@pytest.mark.anvil
def test_reopened_anvil_run_sends_nothing_twice(open_run_ledger, clients, tmp_path):
    first = open_run_ledger(ChainSettings(backend="anvil"))
    register(first, clients)
    record_rounds(first, clients, (0, 1))
    assert first.wait_until_sent(30)
    round_tx = first.outbox.get("round:1").tx
    assert first.close() is None
    with open(tmp_path / "chain" / "outbox.jsonl", "a") as outbox:  # a crash after sending, before the receipt
        outbox.write(json.dumps({"id": "round:1", "status": "submitted", "tx": round_tx}) + "\n")
    lines_before = len(outbox_lines(tmp_path))
    second = open_run_ledger(ChainSettings(backend="anvil"))
    register(second, clients)
    record_rounds(second, clients, (1,))
    assert second.wait_until_sent(30)
    assert second.outbox.get("round:1").status == CONFIRMED and second.outbox.get("round:1").tx == round_tx
    assert len(submissions(tmp_path, "round:1")) == 2 and len(outbox_lines(tmp_path)) == lines_before + 1
    assert second.close() is None


@pytest.mark.anvil
def test_an_admin_that_cannot_pay_ends_the_run_with_one_line(open_run_ledger, clients):
    ledger = open_run_ledger(ChainSettings(backend="anvil"))
    register(ledger, clients)
    record_rounds(ledger, clients, (0,))
    assert ledger.wait_until_sent(30)
    ledger.node.w3.provider.make_request("anvil_setBalance", [ledger.node.accounts.admin.address, "0x0"])
    record_rounds(ledger, clients, (1,))
    message = fails_with(ledger, "the admin account cannot pay")
    assert message.startswith("round 1 record:") and "outbox.jsonl" in message
    assert "cannot pay" in ledger.close()


def test_no_private_key_in_logs_output_or_files(open_run_ledger, clients, tmp_path, caplog, capfd):
    from chain.accounts import dev_accounts

    with caplog.at_level(logging.DEBUG):
        ledger = open_run_ledger()
        register(ledger, clients)
        ledger.record_data_uploads({0: signed_upload(ledger.signing_domain, clients[0], "0d" * 32)})
        record_rounds(ledger, clients, (0, 1))
        assert ledger.wait_until_sent(30)
        print(ledger.summary(), repr(ledger.node), repr(ledger.node.accounts))
        assert ledger.close() is None
    keys = [bytes(account.key) for account in (dev_accounts(0).admin, *clients)]
    output = (caplog.text + "".join(capfd.readouterr())).lower().encode()
    files = b"".join(path.read_bytes() for path in (tmp_path / "chain").iterdir() if path.is_file())
    assert (tmp_path / "chain" / EMBEDDED_CHAIN_FILE).stat().st_size > 0
    for key in keys:
        assert key.hex().encode() not in output and key.hex().encode() not in files.lower()
        assert key not in files  # the embedded chain file is binary: the raw key must not be in it either


def test_a_configured_contract_is_written_to_deployment_json(open_run_ledger, tmp_path):
    """A run on a contract deployed beforehand (python -m chain.deploy) names it where --verify looks for it."""
    from chain.backends import embedded_node
    from chain.deployment import deploy

    node = embedded_node(tmp_path / "shared" / EMBEDDED_CHAIN_FILE)
    address = deploy(node.w3, node.accounts.admin)["contractAddress"]
    node.stop()
    run_dir = tmp_path / "run"
    (run_dir / "chain").mkdir(parents=True)
    shutil.copyfile(tmp_path / "shared" / EMBEDDED_CHAIN_FILE, run_dir / "chain" / EMBEDDED_CHAIN_FILE)
    ledger = open_run_ledger(ChainSettings(contract_address=address), run_dir)
    assert json.loads((run_dir / "chain" / "deployment.json").read_text())["address"] == address
    assert bytes(ledger.contract.functions.adapterConfigDigest().call()).hex() == "c0" * 32


@pytest.mark.anvil
def test_a_run_whose_admin_runs_out_of_funds_exits_3_after_saving_its_rounds(anvil_run, copy_run, monkeypatch, capsys):
    import main_simple_fl
    from chain.ledger import ChainLedger

    record_round = ChainLedger.record_round

    def drain_admin_before_round_2(ledger, record):
        if record.round == 2:
            assert ledger.wait_until_sent(60)
            ledger.node.w3.provider.make_request("anvil_setBalance", [ledger.node.accounts.admin.address, "0x0"])
        record_round(ledger, record)

    monkeypatch.setattr(ChainLedger, "record_round", drain_admin_before_round_2)
    run_dir = copy_run(anvil_run[0])
    capsys.readouterr()
    assert main_simple_fl.main(["--resume", str(run_dir), "--set", "num_rounds=2"]) == 3
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: round 2 record: the admin account cannot pay for it")
    assert (run_dir / "round_2" / "adapter_model.safetensors").is_file()
    assert json.loads((run_dir / "checkpoint.json").read_text())["round"] == 2
    outbox = [json.loads(line) for line in (run_dir / "chain" / "outbox.jsonl").read_text().splitlines()]
    assert [line["status"] for line in outbox if line["id"] == "round:2"] == ["queued"]  # kept for --resume


def test_a_clients_key_is_in_no_file_of_the_run_but_its_own(embedded_run):
    """Each client's signing key stays in RUN_DIR/private/client_<i>/ (issue 9): not in the chain database, the
    outbox, the trail, the logs or the other parties' private state."""
    for client in ("client_0", "client_1"):
        own = embedded_run / "private" / client
        key = (own / "signing_key").read_text().strip().removeprefix("0x").lower()
        others = [p for p in embedded_run.rglob("*") if p.is_file() and own not in p.parents]
        assert any(p.name == "embedded_chain.db" for p in others)
        for path in others:
            data = path.read_bytes()  # the chain database is binary: look for the raw key too
            assert key.encode() not in data.lower() and bytes.fromhex(key) not in data, path
        assert (own / "signing_key").stat().st_mode & 0o077 == 0


# --- registrations and uploads larger than a block -------------------------------------------------------------

SMALL_BLOCK = 5_000_000  # gas: the least chain.block_gas_limit (the contract's deployment takes about 4 M)


def many_clients(count: int) -> list:
    from eth_account import Account

    return [Account.from_key((i + 1).to_bytes(32, "big")) for i in range(count)]


def test_more_clients_than_one_block_holds_are_registered_and_uploaded_in_batches(open_run_ledger):
    """With a block gas limit far below one transaction for every client, registration and uploads go in as many
    transactions as it takes, each under the limit; the contract then holds every client and every upload."""
    from chain.records import GAS_PER_CLIENT, REGISTER, UPLOAD, batch_size
    from flb.config import ChainSettings

    ledger = open_run_ledger(ChainSettings(block_gas_limit=SMALL_BLOCK))
    accounts = many_clients(100)
    assert ledger.node.w3.eth.get_block("latest")["gasLimit"] <= SMALL_BLOCK * 1.01  # the chain itself is small
    register(ledger, accounts)
    ledger.record_data_uploads(
        {i: signed_upload(ledger.signing_domain, a, f"{i + 1:064x}") for i, a in enumerate(accounts)}
    )
    assert ledger.wait_until_sent(120) and ledger.sender.fatal_error is None
    entries = ledger.outbox.entries()
    registrations = [e for e in entries if e.kind == REGISTER]
    uploads = [e for e in entries if e.kind == UPLOAD]
    assert len(registrations) == -(-100 // batch_size(REGISTER, SMALL_BLOCK)) > 1
    assert len(uploads) == -(-100 // batch_size(UPLOAD, SMALL_BLOCK)) > 1
    assert all(e.gas_used < SMALL_BLOCK for e in entries)
    functions = ledger.contract.functions
    assert functions.clientCount().call() == 100
    assert (
        functions.countUploaded(
            [a.address for a in accounts], [bytes.fromhex(f"{i + 1:064x}") for i in range(100)]
        ).call()
        == 100
    )
    # the bounds batches are sized by hold: the gas one more client adds, measured between the two batch sizes
    per_client = {
        kind: (batch[0].gas_used - batch[-1].gas_used)
        / (len(_batch_clients(batch[0])) - len(_batch_clients(batch[-1])))
        for kind, batch in ((REGISTER, registrations), (UPLOAD, uploads))
    }
    assert all(0 < per_client[kind] <= GAS_PER_CLIENT[kind] for kind in per_client), per_client


def _batch_clients(entry) -> list:
    return list(entry.payload["clients"]) if entry.kind == "register" else entry.payload["uploads"]


def test_a_registration_interrupted_between_batches_is_finished_by_the_reopened_ledger(open_run_ledger, tmp_path):
    """A crash after the first batch was sent: the outbox keeps the rest, and the reopened run's ledger sends only
    those, each batch once."""
    from chain.records import REGISTER
    from flb.config import ChainSettings

    settings = ChainSettings(block_gas_limit=SMALL_BLOCK)
    accounts = many_clients(200)
    first = open_run_ledger(settings)
    first.sender.stop(0)  # this process sends by hand below, then "crashes"
    register(first, accounts)
    batch_ids = [e.id for e in first.outbox.entries() if e.kind == REGISTER]
    first.sender._deliver(first.outbox.next_pending())
    assert first.contract.functions.clientCount().call() == len(first.outbox.get(batch_ids[0]).payload["clients"])
    first.node.stop()
    first.outbox.close()
    second = open_run_ledger(settings)
    assert second.wait_until_sent(120) and second.sender.fatal_error is None
    assert second.contract.functions.clientCount().call() == 200 and len(batch_ids) > 2
    for entry_id in batch_ids:
        assert len(submissions(tmp_path, entry_id)) == 1
