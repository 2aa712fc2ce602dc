"""The committed artifact is what the pinned compiler makes of the committed source."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from chain.contract import load_artifact

pytestmark = pytest.mark.chain
CHAIN_DIR = Path(__file__).resolve().parents[2] / "chain"


@pytest.mark.skipif(
    not (CHAIN_DIR / "node_modules" / "solc").is_dir(), reason="chain/node_modules is absent; run `cd chain && npm ci`"
)
def test_committed_artifact_matches_a_fresh_compile(tmp_path):
    out = tmp_path / "FLB.json"
    subprocess.run(
        [shutil.which("node") or "node", str(CHAIN_DIR / "compile.js"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    assert json.loads(out.read_text()) == json.loads((CHAIN_DIR / "artifacts" / "FLB.json").read_text()), (
        "chain/artifacts/FLB.json is stale; run `cd chain && npm run compile` and commit it"
    )


def test_artifact_loads_from_the_package():
    artifact = load_artifact()
    assert artifact["compiler"]["settings"] == {
        "evmVersion": "cancun",
        "optimizer": {"enabled": True, "runs": 200},
        "viaIR": True,
    }
    assert {item.get("name") for item in artifact["abi"]} >= {
        "registerClients",
        "uploadUserData",
        "recordRound",
        "recordSealedRound",
        "recordBufferedRound",
        "verifyRound",
        "verifyBufferedRound",
        "RoundRecorded",
        "BufferedRoundRecorded",
        "BadSignature",
        "WrongRound",
        "TooStale",
        "StartReused",
    }
    assert "addScore" not in {item.get("name") for item in artifact["abi"]}
    assert artifact["deployedBytecode"][2:] in artifact["bytecode"], "the creation code holds the runtime code"


def test_artifact_carries_the_metadata_public_verifiers_need():
    """Sourcify and Etherscan rebuild the bytecode from solc's metadata: compiler, settings, source hashes."""
    artifact = load_artifact()
    metadata = json.loads(artifact["metadata"])
    assert metadata["compiler"]["version"] == artifact["compiler"]["version"].removesuffix(".Emscripten.clang")
    assert metadata["settings"]["evmVersion"] == "cancun" and metadata["settings"]["viaIR"] is True
    assert metadata["settings"]["compilationTarget"] == {"contracts/FLB.sol": "FLB"}
    assert "@openzeppelin/contracts/access/Ownable2Step.sol" in metadata["sources"]


def test_pins_are_exact():
    package = json.loads((CHAIN_DIR / "package.json").read_text())
    assert package["devDependencies"] == {
        "@foundry-rs/anvil": "1.7.1",
        "@openzeppelin/contracts": "5.7.0",
        "solc": "0.8.37",
    }
    assert (CHAIN_DIR / "package-lock.json").is_file()
