"""Accounts: encrypted keystores (the admin's, each client's own), the create CLI, and the rpc backend on a real
node."""

import json

import pytest

from chain.accounts import create_keystore, keystore_admin, main
from chain.errors import AccountError, ChainError
from flb.audit.keystore import KeystoreError, keystore_password, load_keystore
from flb.config import ChainSettings
from tests.chain.conftest import ANCHORS, signed_record, signed_upload

pytestmark = pytest.mark.chain
PASSWORD_ENV = "FLB_TEST_KEYSTORE_PASSWORD"
PASSWORD = "test-password"


def make_keystores(folder, num_clients: int) -> list[str]:
    """admin.json and client_<i>.json in `folder`; their addresses, admin first."""
    names = ["admin.json"] + [f"client_{i}.json" for i in range(num_clients)]
    return [create_keystore(folder / name, PASSWORD, iterations=2**10) for name in names]


def fund(url: str, addresses: list[str]) -> None:
    """1 ETH to each address from anvil's funded dev account 0."""
    from web3 import Web3

    from chain.accounts import dev_accounts
    from chain.transact import fee_fields

    w3 = Web3(Web3.HTTPProvider(url))
    funder = dev_accounts(0).admin
    nonce = w3.eth.get_transaction_count(funder.address)
    for offset, address in enumerate(addresses):
        tx = {"to": address, "value": 10**18, "gas": 21000, "nonce": nonce + offset, "chainId": 31337, **fee_fields(w3)}
        w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(funder.sign_transaction(tx).raw_transaction))


def rpc_settings(url: str, keys, client_keys: str = "fresh") -> ChainSettings:
    return ChainSettings(
        backend="rpc",
        rpc_url=url,
        chain_id=31337,
        keystore_dir=str(keys),
        password_env=PASSWORD_ENV,
        client_keys=client_keys,
    )


def test_admin_keystore_round_trips_and_stays_encrypted(tmp_path, monkeypatch):
    (address,) = make_keystores(tmp_path, 0)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    admin = keystore_admin(tmp_path, PASSWORD_ENV).admin
    assert admin.address == address
    stored = (tmp_path / "admin.json").read_text()
    assert bytes(admin.key).hex() not in stored and "ciphertext" in stored
    assert (tmp_path / "admin.json").stat().st_mode & 0o077 == 0


def test_client_keystore_opens_with_the_shared_password_variable(tmp_path, monkeypatch):
    addresses = make_keystores(tmp_path, 2)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    opened = [load_keystore(tmp_path / f"client_{i}.json", keystore_password(PASSWORD_ENV)) for i in range(2)]
    assert [account.address for account in opened] == addresses[1:]


def test_missing_password_wrong_password_and_missing_dir_say_the_fix(tmp_path, monkeypatch):
    make_keystores(tmp_path, 0)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(KeystoreError, match=f"{PASSWORD_ENV} is not set"):
        keystore_admin(tmp_path, PASSWORD_ENV)
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    with pytest.raises(KeystoreError, match="cannot decrypt"):
        keystore_admin(tmp_path, PASSWORD_ENV)
    with pytest.raises(AccountError, match="chain.keystore_dir: not set"):
        keystore_admin(None, PASSWORD_ENV)
    with pytest.raises(KeystoreError, match="create it with `python -m chain.accounts create --role client"):
        load_keystore(tmp_path / "client_3.json", "wrong")


def test_create_cli_prints_the_address_only_and_never_overwrites(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    out = tmp_path / "keys" / "client_0.json"
    assert main(["create", "--role", "client", "--out", str(out), "--password-env", PASSWORD_ENV]) == 0
    printed = capsys.readouterr().out
    address = "0x" + json.loads(out.read_text())["address"]
    assert address.lower() in printed.lower() and "ciphertext" not in printed
    before = out.read_bytes()
    assert main(["create", "--role", "client", "--out", str(out), "--password-env", PASSWORD_ENV]) == 1
    assert out.read_bytes() == before


@pytest.mark.anvil
def test_rpc_backend_records_rounds_signed_with_each_clients_own_keystore(tmp_path, monkeypatch, anvil):
    from chain.ledger import open_ledger

    keys = tmp_path / "keys"
    admin_address, *_ = make_keystores(keys, 2)
    fund(anvil.url, [admin_address])  # only the admin pays: clients' uploads and updates are relayed
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    clients = [load_keystore(keys / f"client_{i}.json", keystore_password(PASSWORD_ENV)) for i in range(2)]
    ledger = open_ledger(rpc_settings(anvil.url, keys), tmp_path / "run", ANCHORS)
    try:
        assert ledger.node.accounts.admin.address == admin_address and ledger.node.accounts.clients == ()
        ledger.register_clients({i: account.address for i, account in enumerate(clients)})
        ledger.record_data_uploads({1: signed_upload(ledger.signing_domain, clients[1], "1a" * 32)})
        ledger.record_round(signed_record(ledger.signing_domain, clients, 0, client_ids=()))
        ledger.record_round(signed_record(ledger.signing_domain, clients, 1))
        assert ledger.wait_until_sent(30)
        assert ledger.scores() == {0: 0 * 1000 + 10, 1: 1 * 1000 + 11}
        assert ledger.contract.functions.owner().call() == admin_address
    finally:
        assert ledger.close() is None


@pytest.mark.anvil
def test_preflight_refuses_an_unfunded_admin_and_a_missing_client_keystore(tmp_path, monkeypatch, anvil):
    from chain.ledger import preflight

    keys = tmp_path / "keys"
    admin_address, *_ = make_keystores(keys, 1)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    persistent = rpc_settings(anvil.url, keys, "persistent")
    with pytest.raises(ChainError, match=f"the admin account {admin_address} has no funds on chain 31337"):
        preflight(persistent, in_process_clients=True, num_clients=1)
    fund(anvil.url, [admin_address])
    preflight(persistent, in_process_clients=True, num_clients=1)
    with pytest.raises(KeystoreError, match=r"^keystore .+/client_1\.json: not found; create it with"):
        preflight(persistent, in_process_clients=True, num_clients=2)
    preflight(persistent, in_process_clients=False, num_clients=2)  # Flower nodes hold their own keystores
    preflight(rpc_settings(anvil.url, keys), in_process_clients=True, num_clients=2)  # fresh: admin.json is enough


@pytest.mark.anvil
def test_rpc_backend_rejects_a_wrong_chain_id(tmp_path, anvil):
    from chain.ledger import open_ledger

    settings = ChainSettings(backend="rpc", rpc_url=anvil.url, chain_id=5)
    with pytest.raises(ChainError, match="chain id 31337, not 5"):
        open_ledger(settings, tmp_path, ANCHORS)


@pytest.mark.anvil
def test_deploy_cli_deploys_with_the_admin_keystore(tmp_path, monkeypatch, anvil, capsys):
    from web3 import Web3

    from chain.deploy import main as deploy_main

    (admin_address,) = make_keystores(tmp_path, 0)
    fund(anvil.url, [admin_address])
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    argv = [
        "--rpc-url",
        anvil.url,
        "--chain-id",
        "31337",
        "--keystore",
        str(tmp_path / "admin.json"),
        "--password-env",
        PASSWORD_ENV,
    ]
    assert deploy_main(argv) == 0
    printed = capsys.readouterr().out
    address = printed.split("chain.contract_address: ")[1].strip()
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    assert w3.eth.get_code(address) and f"owner {admin_address}" in printed


@pytest.fixture(scope="module")
def tiny_client_parts(tiny_model_dir, tmp_path_factory):
    """The tiny model, its tokenizer and one shard: enough to build the run's clients as a run does."""
    import assembly
    from flb.config import load_config
    from tests.tiny_model import tiny_run_overrides

    config = load_config(None, tiny_run_overrides(tiny_model_dir, tmp_path_factory.mktemp("runs")))
    tokenizer, model = assembly.build_model(config)
    return assembly.build_data(config)[0][0], model, tokenizer


def client_addresses(config, run_dir, parts, num_clients: int = 2) -> list[str]:
    """The signing addresses of the run's in-process clients, built as main_simple_fl builds them."""
    import assembly

    shard, model, tokenizer = parts
    return [assembly.build_run_client(config, run_dir, i, shard, model, tokenizer).address for i in range(num_clients)]


def key_config(tmp_path, keys, client_keys: str):
    """An rpc run's config: only the keys matter here (nothing connects to the node)."""
    from flb.config import load_config

    return load_config(
        None,
        [
            "chain_record=true",
            "chain.backend=rpc",
            "chain.rpc_url=http://127.0.0.1:1",
            "chain.chain_id=31337",
            f"chain.keystore_dir={keys}",
            f"chain.client_keys={client_keys}",
            f"chain.password_env={PASSWORD_ENV}",
            f"output_dir={tmp_path / 'runs'}",
            "num_clients=2",
            "clients_per_round=2",
        ],
    )


def test_fresh_client_keys_unlink_runs_and_a_resume_keeps_them(tmp_path, tiny_client_parts):
    """fresh on rpc: keystore_dir holds only admin.json; each run's clients sign with new keys, kept in the run's
    private folder so --resume signs with them again."""
    from flb.run.directory import RunDir

    keys = tmp_path / "keys"
    make_keystores(keys, 0)
    config = key_config(tmp_path, keys, "fresh")
    first, second = (RunDir.create(config.output_dir, config.to_dict()) for _ in range(2))
    addresses = client_addresses(config, first, tiny_client_parts)
    assert len(set(addresses)) == 2
    assert not set(addresses) & set(client_addresses(config, second, tiny_client_parts))
    assert client_addresses(config, RunDir.open(first.path), tiny_client_parts) == addresses
    key_file = first.private_dir("client_0") / "signing_key"
    assert key_file.stat().st_mode & 0o077 == 0


def test_persistent_client_keys_are_the_same_in_every_run(tmp_path, monkeypatch, tiny_client_parts):
    from flb.run.directory import RunDir

    keys = tmp_path / "keys"
    _, *clients = make_keystores(keys, 2)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    config = key_config(tmp_path, keys, "persistent")
    runs = [RunDir.create(config.output_dir, config.to_dict()) for _ in range(2)]
    assert [client_addresses(config, run, tiny_client_parts) for run in runs] == [clients, clients]
    assert not (runs[0].private_dir("client_0") / "signing_key").exists()


def test_persistent_client_keys_say_what_is_missing_in_one_line(tmp_path, monkeypatch):
    import assembly
    from flb.audit.keystore import client_keystore
    from flb.config import load_config

    with pytest.raises(
        KeystoreError,
        match=r"^chain.client_keys: persistent needs chain.keystore_dir, the folder "
        r"holding each client's client_<i>.json; set it, or use chain.client_keys "
        r"fresh$",
    ):
        client_keystore(ChainSettings(client_keys="persistent"), 0)
    make_keystores(tmp_path, 1)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    config = load_config(
        None,
        [
            "num_clients=2",
            "clients_per_round=2",
            f"chain.keystore_dir={tmp_path}",
            "chain.client_keys=persistent",
            f"chain.password_env={PASSWORD_ENV}",
        ],
    )
    with pytest.raises(KeystoreError) as refused:  # before a run directory exists (embedded: no node to reach)
        assembly.check_chain(config)
    assert str(refused.value) == (
        f"keystore {tmp_path}/client_1.json: not found; create it with `python -m "
        f"chain.accounts create --role client --out {tmp_path}/client_1.json`"
    )
    assembly.check_chain(config, in_process_clients=False)  # Flower nodes hold their own keystores


def test_chain_client_keys_takes_fresh_or_persistent():
    from flb.errors import ConfigError

    assert ChainSettings().client_keys == "fresh"
    with pytest.raises(ConfigError, match=r"chain.client_keys: invalid value 'shared'; allowed: fresh \| persistent"):
        ChainSettings(client_keys="shared")
