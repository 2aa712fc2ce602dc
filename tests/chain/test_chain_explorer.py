"""The explorer prints the trail from a run directory; --verify catches a tampered adapter file."""
import pytest
import torch
from safetensors.torch import save_file

from chain.explorer import main
from chain.ledger import open_ledger
from flb.config import ChainSettings
from flb.digests import adapter_digest
from flb.types import RoundRecord

pytestmark = pytest.mark.chain


def write_adapter(path, seed: int) -> str:
    generator = torch.Generator().manual_seed(seed)
    state = {"base_model.model.layers.0.q_proj.lora_A.weight": torch.randn(2, 8, generator=generator),
             "base_model.model.layers.0.q_proj.lora_B.weight": torch.randn(8, 2, generator=generator)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return adapter_digest(state)


@pytest.fixture
def recorded_run(tmp_path):
    """A run directory with two rounds of adapter files, recorded on the embedded chain."""
    ledger = open_ledger(ChainSettings(explorer_url="https://explorer.example/tx/{tx}"), tmp_path, num_clients=2)
    ledger.record_data_upload(0, "sha256:" + "0e" * 32)
    for round_number in (1, 2):
        folder = tmp_path / f"round_{round_number}"
        updates = [write_adapter(folder / "updates" / f"client_{c}.safetensors", 10 * round_number + c) for c in (0, 1)]
        global_digest = write_adapter(folder / "adapter_model.safetensors", round_number)
        ledger.record_round(RoundRecord(round_number, global_digest, [0, 1], updates, [5, 6], [100, 100], {}))
    assert ledger.wait_until_sent(30)
    ledger.close()
    return tmp_path


def test_explorer_prints_blocks_calls_events_scores_and_rounds(recorded_run, capsys):
    assert main([str(recorded_run)]) == 0
    out = capsys.readouterr().out
    for expected in ("constructor()", "uploadUserData(data=sha256:", "event DataUpload(", "recordRound(round=1",
                     "event RoundRecorded(round=2", "(client 0)  210", "(client 1)  12", "round 2  global adapter 0x",
                     "https://explorer.example/tx/0x"):
        assert expected in out


def test_verify_passes_on_untouched_files(recorded_run, capsys):
    assert main(["--verify", str(recorded_run)]) == 0
    assert "6 adapter files match the chain, 0 problems" in capsys.readouterr().out


def test_verify_names_round_and_client_of_a_tampered_update(recorded_run, capsys):
    write_adapter(recorded_run / "round_2" / "updates" / "client_1.safetensors", seed=999)
    assert main(["--verify", str(recorded_run)]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH round 2 client 1:" in out and "round 1 client" not in out


def test_verify_catches_a_tampered_global_adapter(recorded_run, capsys):
    write_adapter(recorded_run / "round_1" / "adapter_model.safetensors", seed=999)
    assert main(["--verify", str(recorded_run)]) == 1
    assert "MISMATCH round 1 global adapter" in capsys.readouterr().out


def test_verify_flags_a_round_missing_from_the_chain(recorded_run, capsys):
    write_adapter(recorded_run / "round_3" / "adapter_model.safetensors", seed=3)
    assert main(["--verify", str(recorded_run)]) == 1
    assert "round 3:" in capsys.readouterr().out


def test_explorer_without_trail_says_what_to_do(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "chain_record: true" in capsys.readouterr().err


@pytest.mark.anvil
def test_explorer_reads_a_live_chain(tmp_path, capsys):
    ledger = open_ledger(ChainSettings(backend="anvil"), tmp_path, num_clients=2)
    ledger.record_data_upload(1, "sha256:" + "0f" * 32)
    assert ledger.wait_until_sent(30)
    address = ledger.summary()["contract"]
    try:
        assert main(["--rpc", ledger.node.anvil.url, "--address", address, str(tmp_path)]) == 0
    finally:
        ledger.close()
    assert "event DataUpload(user=0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC (client 1))" in capsys.readouterr().out
