"""The explorer prints a run's trail (blocks, decoded calls and events, scores, rounds) and reads live chains.
Its --verify is tested on whole runs in test_chain_verify.py."""

import pytest

from chain.explorer import main
from flb.config import ChainSettings
from tests.chain.conftest import global_digest, register, signed_record, signed_upload, update_digest

pytestmark = pytest.mark.chain
DATA_DIGEST = "0e" * 32


def record_a_short_run(ledger, clients):
    register(ledger, clients[:2])
    ledger.record_data_uploads({0: signed_upload(ledger.signing_domain, clients[0], DATA_DIGEST)})
    ledger.record_round(signed_record(ledger.signing_domain, clients, 0, client_ids=()))
    ledger.record_round(signed_record(ledger.signing_domain, clients, 1))
    ledger.record_round(signed_record(ledger.signing_domain, clients, 2, client_ids=(1,)))
    assert ledger.wait_until_sent(30)


@pytest.fixture
def recorded_run(open_run_ledger, clients, tmp_path):
    """A run directory whose ledger registered 2 clients, recorded client 0's upload and rounds 0-2 (embedded)."""
    ledger = open_run_ledger(ChainSettings(explorer_url="https://explorer.example/tx/{tx}"))
    record_a_short_run(ledger, clients)
    assert ledger.close() is None
    return tmp_path


def explorer_output(run_dir, capsys) -> str:
    assert main([str(run_dir)]) == 0
    return capsys.readouterr().out


def test_explorer_decodes_the_deployment_registration_and_upload(recorded_run, clients, capsys):
    out = explorer_output(recorded_run, capsys)
    client_0 = f"{clients[0].address} (client 0)"
    for expected in (
        "constructor(code_matches_artifact=True)",
        "(admin)  nonce 0  ok",
        f"event ClientRegistered(client={client_0}, round=0)",
        f'uploadUserData(clients=["{clients[0].address}"], dataDigests=["0x{DATA_DIGEST}"], signatures=["0x',
        f"event DataUpload(user={client_0}, dataDigest=0x{DATA_DIGEST})",
    ):
        assert expected in out


def test_explorer_decodes_rounds_with_previous_digest_counts_and_per_round_scores(recorded_run, clients, capsys):
    out = explorer_output(recorded_run, capsys)
    assert (
        f"event RoundRecorded(round=2, previousGlobalDigest=0x{global_digest(1)}, "
        f'globalDigest=0x{global_digest(2)}, metricsDigest=0x{3:064x}, clients=["{clients[1].address}"], '
        f'updateDigests=["0x{update_digest(2, 1)}"], numExamples=[11], scores=[11])'
    ) in out
    assert f"event ScoreAdd(user={clients[0].address} (client 0), round=1, score=1010)" in out  # 1 upload x 1000 B + 10
    assert f"event ScoreAdd(user={clients[1].address} (client 1), round=2, score=11)" in out
    assert f"{clients[1].address} (client 1)  22" in out  # cumulative: 11 in round 1 and 11 in round 2
    assert f"round 2  global adapter 0x{global_digest(2)}" in out
    assert f"(client 1)  update 0x{update_digest(2, 1)}  examples 11  score 11" in out
    assert out.count("https://explorer.example/tx/0x") == out.count("  tx 0x")


def test_explorer_shows_each_buffered_updates_start_round(open_run_ledger, clients, tmp_path, capsys):
    from tests.chain.conftest import BUFFERED_ANCHORS

    ledger = open_run_ledger(anchors=BUFFERED_ANCHORS)
    register(ledger, clients)
    ledger.record_round(signed_record(ledger.signing_domain, clients, 0, client_ids=()))
    ledger.record_round(signed_record(ledger.signing_domain, clients, 1, client_ids=(0,), start_rounds=[0]))
    ledger.record_round(signed_record(ledger.signing_domain, clients, 2, client_ids=(1,), start_rounds=[0]))
    assert ledger.close() is None
    out = explorer_output(tmp_path, capsys)
    assert "buffered=True, maxStaleness=1)" in out
    assert (
        f"event BufferedRoundRecorded(round=2, previousGlobalDigest=0x{global_digest(1)}, "
        f'globalDigest=0x{global_digest(2)}, metricsDigest=0x{3:064x}, clients=["{clients[1].address}"], '
        f'startRounds=[0], updateDigests=["0x{update_digest(2, 1)}"], numExamples=[11], scores=[11])'
    ) in out
    assert f"(client 1)  update 0x{update_digest(2, 1)}  from round 0 (staleness 1)  examples 11  score 11" in out
    assert f"(client 0)  update 0x{update_digest(1, 0)}  from round 0 (staleness 0)  examples 10" in out


def test_explorer_without_trail_says_what_to_do(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "chain_record: true" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [[], ["--verify"]])
def test_a_run_directory_that_does_not_exist_is_one_line_saying_so(tmp_path, capsys, flags):
    assert main([str(tmp_path / "runs" / "missing"), *flags]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'runs' / 'missing'}: the run directory does not exist; give "
        "output_dir/<run-id> (e.g. runs/latest)\n"
    )


def test_verify_of_a_run_that_recorded_nothing_says_so(tmp_path, capsys):
    assert main([str(tmp_path), "--verify"]) == 2
    assert "this run recorded nothing on a chain" in capsys.readouterr().err


def test_verify_without_a_run_dir_shows_the_usage(capsys):
    assert main(["--verify"]) == 2
    assert "python -m chain.explorer RUN_DIR --verify" in capsys.readouterr().err


@pytest.mark.anvil
def test_explorer_reads_a_live_chain(open_run_ledger, clients, tmp_path, capsys):
    ledger = open_run_ledger(ChainSettings(backend="anvil"))
    record_a_short_run(ledger, clients)
    address = ledger.summary()["contract"]
    assert main(["--rpc", ledger.node.anvil.url, "--address", address]) == 0
    out = capsys.readouterr().out
    assert f"event DataUpload(user={clients[0].address}, dataDigest=0x{DATA_DIGEST})" in out
    assert "event RunAnchored(adapterConfigDigest=0x" in out  # every event, not just the outbox's
    assert f"round 2  global adapter 0x{global_digest(2)}" in out


def test_a_copied_run_names_the_embedded_chain_file_in_the_copy(tmp_path):
    import json
    import shutil

    from chain.trail import read_trail

    original = tmp_path / "original"
    (original / "chain").mkdir(parents=True)
    (original / "chain" / "trail.json").write_text(
        json.dumps(
            {"backend": "embedded", "chain": f"embedded py-evm (saved in {original / 'chain' / 'embedded_chain.db'})"}
        )
    )
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(original, copy)
    assert read_trail(copy)["chain"] == f"embedded py-evm (saved in {copy / 'chain' / 'embedded_chain.db'})"
    shutil.rmtree(original)
    assert str(original) not in json.dumps(read_trail(copy))
