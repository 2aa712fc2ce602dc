"""Fixtures for chain/: a real EVM on each backend (embedded py-evm in process, a local anvil), and clients that
sign their own round records (flb.audit.attestation), as the contract requires."""

from pathlib import Path

import pytest

from chain.deployment import RunAnchors

CHAIN_DIR = Path(__file__).resolve().parents[2] / "chain"
NO_NODE_MODULES = "chain/node_modules is absent; run `cd chain && npm ci`"
ANCHORS = RunAnchors(
    "c0" * 32, "c1" * 32
)  # what the ledger anchors for a run; any non-zero digests will do in unit tests
BUFFERED_ANCHORS = RunAnchors("c0" * 32, "c1" * 32, max_staleness=1)  # a fedbuff run's


def pytest_collection_modifyitems(items):
    for item in items:
        if "anvil" in item.keywords and not (CHAIN_DIR / "node_modules").is_dir():
            item.add_marker(pytest.mark.skip(reason=NO_NODE_MODULES))


@pytest.fixture
def anvil(tmp_path):
    """A fresh anvil on a free port, stopped at the end of the test."""
    from chain.anvil import AnvilProcess

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


# --- signed records ---------------------------------------------------------------------------


def global_digest(round_number: int) -> str:
    """The global adapter digest the helpers record for a round (distinct per round, never zero)."""
    return f"{0xA0 + round_number:064x}"


def update_digest(round_number: int, client_id: int) -> str:
    return f"{round_number + 1:032x}{client_id + 1:032x}"


def signed_record(
    domain,
    clients,
    round_number: int,
    *,
    client_ids=(0, 1),
    previous: str | None = "chained",
    global_digest_: str | None = None,
    num_examples=None,
    update_digests=None,
    signers=None,
    signed_round: int | None = None,
    metrics: dict | None = None,
    num_bytes: int = 1000,
    start_rounds=None,
):
    """A RoundRecord for `round_number` whose updates are signed by `clients[i]` (eth-account accounts) for `domain`,
    as a client signs its update: over (round, previous global digest, update digest, example count).
    `previous` defaults to the helpers' digest of the round before (none for round 0); `signers` and
    `signed_round` forge the signatures (another key, another round). `start_rounds` (one per client) makes it a
    buffered round's record: each update signed over (its start + 1, the helpers' digest of its start round)."""
    from flb.audit.attestation import sign_update
    from flb.types import RoundRecord

    if previous == "chained":
        previous = None if round_number == 0 else global_digest(round_number - 1)
    client_ids = list(client_ids)
    counts = list(num_examples or [10 + c for c in client_ids])
    digests = list(update_digests or [update_digest(round_number, c) for c in client_ids])
    keys = signers or [clients[c] for c in client_ids]
    # what each client started from: the previous round, or in a buffered round its own start round
    started = [(round_number, previous)] * len(client_ids)
    if start_rounds is not None:
        started = [(start + 1, global_digest(start)) for start in start_rounds]
    signatures = [
        sign_update(
            key,
            domain,
            round=signed if signed_round is None else signed_round,
            previous_global_digest=base or "00" * 32,
            update_digest=d,
            num_examples=n,
        )
        for key, d, n, (signed, base) in zip(keys, digests, counts, started)
    ]
    return RoundRecord(
        round=round_number,
        previous_global_digest=previous,
        global_digest=global_digest_ or global_digest(round_number),
        client_ids=client_ids,
        addresses=[clients[c].address for c in client_ids],
        update_digests=digests,
        num_examples=counts,
        signatures=signatures,
        update_num_bytes=[num_bytes] * len(client_ids),
        metrics=metrics or {},
        metrics_digest=f"{round_number + 1:064x}",
        start_rounds=None if start_rounds is None else list(start_rounds),
    )


def signed_upload(domain, account, data_digest: str):
    from flb.audit.attestation import sign_data_upload
    from flb.types import SignedUpload

    return SignedUpload(data_digest, sign_data_upload(account, domain, data_digest))


def register(ledger, clients) -> None:
    ledger.register_clients({i: account.address for i, account in enumerate(clients)})


@pytest.fixture
def clients():
    """Three dev client accounts (accounts 1-3 of the dev mnemonic): keys only the test holds, not the ledger."""
    from chain.accounts import dev_accounts

    return list(dev_accounts(3).clients)


@pytest.fixture
def open_run_ledger(tmp_path):
    """open_run_ledger(settings=None, run_dir=tmp_path, anchors=ANCHORS) -> a ChainLedger on the run's contract; every
    ledger it opened is closed at the end of the test (close() twice is harmless)."""
    from chain.ledger import open_ledger
    from flb.config import ChainSettings

    opened = []

    def open_(settings=None, run_dir=None, anchors=ANCHORS):
        ledger = open_ledger(settings or ChainSettings(), run_dir or tmp_path, anchors)
        opened.append(ledger)
        return ledger

    yield open_
    for ledger in opened:
        ledger.close(timeout_s=5)


# --- whole runs of the tiny model ------------------------------------------------------------------


def run_overrides(model_dir, output_dir, *extra: str) -> list[str]:
    """--set overrides for a fast 2-round, 2-client run of the tiny model recorded on the chain."""
    return [
        f"model.model_path={model_dir}",
        f"output_dir={output_dir}",
        "num_clients=2",
        "clients_per_round=2",
        "num_rounds=2",
        "local_steps=1",
        "eval.size=4",
        "eval.max_new_tokens=2",
        "sft.learning_rate=0.01",
        "sft.max_length=96",
        "model.lora.dropout=0.0",
        "chain_record=true",
        *extra,
    ]


def whole_run(model_dir, output_dir, *extra: str) -> Path:
    import assembly
    from flb.config import load_config

    return assembly.run(load_config(None, run_overrides(model_dir, output_dir, *extra)))


@pytest.fixture(scope="session")
def embedded_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A finished 2-round run on the embedded chain whose clients send int8 updates and receive an nf4 global adapter
    (comm.*), so every check of it runs over compressed payloads (anvil_run's are whole). Shared: tests that change it
    work on a copy (copy_run)."""
    return whole_run(
        tiny_model_dir,
        tmp_path_factory.mktemp("embedded-runs"),
        "comm.compression=int8",
        "comm.broadcast_compression=nf4",
    )


@pytest.fixture(scope="session")
def anvil_run(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A finished 1-round run on anvil, and a copy of its anvil state taken after round 0 was confirmed and before
    round 1 was sent (anvil stopped, which makes it write its state, and restarted on it, as a node restart would).
    Shared: tests that change it work on a copy (copy_run)."""
    import shutil

    from chain.backends import ANVIL_STATE_FILE
    from chain.ledger import ChainLedger

    folder = tmp_path_factory.mktemp("anvil-runs")
    snapshot = folder / "anvil_state_before_round_1.json"
    record_round = ChainLedger.record_round

    def snapshot_before_round_1(ledger, record):
        if record.round == 1:
            assert ledger.wait_until_sent(60)
            ledger.node.anvil.stop()
            shutil.copyfile(ledger.chain_dir / ANVIL_STATE_FILE, snapshot)
            ledger.node.anvil.start()
        record_round(ledger, record)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ChainLedger, "record_round", snapshot_before_round_1)
        run_path = whole_run(tiny_model_dir, folder, "chain.backend=anvil", "num_rounds=1")
    assert snapshot.is_file()
    return run_path, snapshot


@pytest.fixture
def copy_run(tmp_path):
    """copy_run(run_path) -> a copy of that run directory (chain state, private keys and all) to change freely."""
    import shutil

    def copy(run_path: Path) -> Path:
        return Path(shutil.copytree(run_path, tmp_path / "copies" / run_path.name, symlinks=True))

    return copy
