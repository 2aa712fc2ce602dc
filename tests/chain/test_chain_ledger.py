"""The ledger: outbox, background sending, resume, reverts surfaced, no keys in any output."""
import json
import logging
import time

import pytest

from chain.backends import embedded_node
from chain.contract import flb_contract
from chain.ledger import ChainLedger, open_ledger
from chain.outbox import CONFIRMED, FAILED
from chain.transact import send_signed, sign_call
from flb.config import ChainSettings

pytestmark = pytest.mark.chain


def outbox_lines(run_dir):
    return [json.loads(line) for line in (run_dir / "chain" / "outbox.jsonl").read_text().splitlines()]


def submissions(run_dir, entry_id):
    return [line for line in outbox_lines(run_dir) if line["id"] == entry_id and line["status"] == "submitted"]


def test_embedded_ledger_records_uploads_and_rounds(tmp_path, make_record):
    ledger = open_ledger(ChainSettings(), tmp_path, num_clients=2)
    ledger.record_data_upload(0, "sha256:" + "01" * 32)
    ledger.record_data_upload(1, "02" * 32)  # a bare hex digest is recorded as sha256:<hex>
    ledger.record_round(make_record(1))
    assert ledger.wait_until_sent(30)
    assert ledger.outbox.get("upload:1:sha256:" + "02" * 32).status == CONFIRMED
    recorded = ledger.get_round(1)
    assert recorded["global_digest"] == make_record(1).global_digest
    assert recorded["update_digests"] == make_record(1).update_digests
    assert recorded["scores"] == [1 * 1000 + 10, 1 * 1000 + 11]  # uploads x bytes + examples
    assert ledger.scores() == {0: 1010, 1: 1011}
    ledger.close()
    summary = ledger.summary()
    assert summary["backend"] == "embedded" and summary["pending"] == 0 and summary["failed"] == 0
    assert [tx["record"] for tx in summary["transactions"]][0] == "deploy"
    assert all(tx["tx"] for tx in summary["transactions"])
    assert (tmp_path / "chain" / "trail.json").is_file()


def test_record_calls_return_at_once(tmp_path, make_record):
    ledger = open_ledger(ChainSettings(), tmp_path, num_clients=2)
    start = time.monotonic()
    for round_number in range(1, 6):
        ledger.record_round(make_record(round_number))
    assert time.monotonic() - start < 2.0  # sending them takes ~0.1 s each; queueing does not wait for it
    assert ledger.wait_until_sent(60)
    ledger.close()


def test_duplicate_upload_is_recorded_as_failed_with_cause(tmp_path, caplog):
    ledger = open_ledger(ChainSettings(), tmp_path, num_clients=2)
    ledger.record_data_upload(0, "sha256:" + "05" * 32)
    ledger.record_data_upload(1, "sha256:" + "05" * 32)
    with caplog.at_level(logging.ERROR, logger="chain.ledger"):
        assert ledger.wait_until_sent(30)
    failed = ledger.outbox.get("upload:1:sha256:" + "05" * 32)
    assert failed.status == FAILED and "Data already uploaded" in failed.error
    assert "Data already uploaded" in caplog.text
    ledger.close()


def test_not_owner_is_recorded_as_failed_with_cause(tmp_path, make_record):
    node = embedded_node(num_clients=2)
    stranger = node.accounts.clients[1]
    receipt = send_signed(node.w3, sign_call(node.w3, stranger, flb_contract(node.w3).constructor(stranger.address), "deploy"), 30)
    ledger = ChainLedger(node, ChainSettings(contract_address=receipt["contractAddress"]), tmp_path)
    ledger.record_round(make_record(1))
    assert ledger.wait_until_sent(30)
    assert "not the contract owner" in ledger.outbox.get("round:1").error
    ledger.close()


def test_reopened_embedded_run_resends_to_the_new_chain(tmp_path, make_record):
    first = open_ledger(ChainSettings(), tmp_path, num_clients=2)
    first.record_data_upload(0, "sha256:" + "0a" * 32)
    first.record_round(make_record(1))
    first.close()
    second = open_ledger(ChainSettings(), tmp_path, num_clients=2)
    second.record_data_upload(0, "sha256:" + "0a" * 32)  # a resumed run records its shards again: no duplicate
    second.record_round(make_record(2))
    assert second.wait_until_sent(30)
    assert second.get_round(1) is not None and second.get_round(2) is not None
    assert second.scores()[0] == 2 * (1000 + 10)
    assert second.outbox.count(CONFIRMED) == 3
    second.close()


def test_quality_scoring_takes_scores_from_metrics(tmp_path, make_record):
    ledger = open_ledger(ChainSettings(scoring="quality"), tmp_path, num_clients=2)
    record = make_record(1)
    record.metrics["scores"] = [0, 42]
    ledger.record_round(record)
    assert ledger.wait_until_sent(30)
    assert ledger.get_round(1)["scores"] == [0, 42]
    ledger.close()


@pytest.mark.anvil
def test_outbox_keeps_every_record_while_anvil_is_down(tmp_path, make_record):
    ledger = open_ledger(ChainSettings(backend="anvil"), tmp_path, num_clients=2)
    ledger.record_data_upload(0, "sha256:" + "0b" * 32)
    ledger.record_round(make_record(1))
    assert ledger.wait_until_sent(30)
    ledger.node.anvil.stop()
    start = time.monotonic()
    ledger.record_round(make_record(2))
    ledger.record_round(make_record(3))
    assert time.monotonic() - start < 2.0  # training is not blocked
    assert not ledger.wait_until_sent(1.5)
    ledger.node.anvil.start()  # same port, state reloaded from run_dir/chain/anvil_state.json
    assert ledger.wait_until_sent(30)
    for round_number in (1, 2, 3):
        assert ledger.get_round(round_number)["global_digest"] == make_record(round_number).global_digest
        assert len(submissions(tmp_path, f"round:{round_number}")) == 1
    ledger.close()


@pytest.mark.anvil
def test_reopened_anvil_run_sends_nothing_twice(tmp_path, make_record):
    first = open_ledger(ChainSettings(backend="anvil"), tmp_path, num_clients=2)
    first.record_data_upload(0, "sha256:" + "0c" * 32)
    first.record_round(make_record(1))
    assert first.wait_until_sent(30)
    round_tx = first.outbox.get("round:1").tx
    first.close()
    with open(tmp_path / "chain" / "outbox.jsonl", "a") as outbox:  # a crash after sending, before the receipt
        outbox.write(json.dumps({"id": "round:1", "status": "submitted", "tx": round_tx}) + "\n")
    lines_before = len(outbox_lines(tmp_path))
    second = open_ledger(ChainSettings(backend="anvil"), tmp_path, num_clients=2)
    second.record_data_upload(0, "sha256:" + "0c" * 32)
    second.record_round(make_record(1))
    assert second.wait_until_sent(30)
    assert second.outbox.get("round:1").status == CONFIRMED and second.outbox.get("round:1").tx == round_tx
    assert len(submissions(tmp_path, "round:1")) == 2 and len(outbox_lines(tmp_path)) == lines_before + 1
    second.close()


def test_no_private_key_in_logs_output_or_files(tmp_path, make_record, caplog, capfd):
    from chain.accounts import dev_accounts

    with caplog.at_level(logging.DEBUG):
        ledger = open_ledger(ChainSettings(), tmp_path, num_clients=2)
        ledger.record_data_upload(0, "sha256:" + "0d" * 32)
        ledger.record_round(make_record(1))
        assert ledger.wait_until_sent(30)
        print(ledger.summary(), repr(ledger.node), repr(ledger.node.accounts))
        ledger.close()
    accounts = dev_accounts(2)
    secrets = [a.key.hex().removeprefix("0x") for a in (accounts.admin, *accounts.clients)]
    output = caplog.text + "".join(capfd.readouterr())
    files = "".join(path.read_text() for path in (tmp_path / "chain").iterdir())
    for secret in secrets:
        assert secret.lower() not in output.lower() and secret.lower() not in files.lower()
