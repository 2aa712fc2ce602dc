"""Fixtures for chain/: a real EVM on each backend (embedded py-evm in process, a local anvil)."""
from pathlib import Path

import pytest

CHAIN_DIR = Path(__file__).resolve().parents[2] / "chain"
NO_NODE_MODULES = "chain/node_modules is absent; run `cd chain && npm ci`"


def pytest_collection_modifyitems(items):
    for item in items:
        if "anvil" in item.keywords and not (CHAIN_DIR / "node_modules").is_dir():
            item.add_marker(pytest.mark.skip(reason=NO_NODE_MODULES))


@pytest.fixture
def anvil(tmp_path):
    """A fresh anvil on a free port, stopped at the end of the test."""
    from chain.backends import AnvilProcess

    process = AnvilProcess(tmp_path / "anvil_state.json", num_accounts=10)
    process.start()
    yield process
    process.stop()


@pytest.fixture(params=["embedded", pytest.param("anvil", marks=pytest.mark.anvil)])
def evm(request, tmp_path):
    """(w3, accounts) on each backend: account 0 deploys, the others are clients."""
    from web3 import Web3

    from chain.accounts import dev_accounts
    from chain.backends import embedded_node

    if request.param == "embedded":
        node = embedded_node(num_clients=3)
        yield node.w3, node.accounts
        return
    process = request.getfixturevalue("anvil")
    yield Web3(Web3.HTTPProvider(process.url)), dev_accounts(3)


@pytest.fixture
def make_record():
    from flb.types import RoundRecord

    def build(round_number: int, client_ids=(0, 1), global_digest: str | None = None, update_digests=None) -> RoundRecord:
        return RoundRecord(
            round=round_number,
            global_digest=global_digest or f"{round_number:064x}",
            client_ids=list(client_ids),
            update_digests=update_digests or [f"{round_number * 100 + c:064x}" for c in client_ids],
            num_examples=[10 + c for c in client_ids],
            update_num_bytes=[1000] * len(client_ids),
            metrics={},
        )

    return build
