"""Accounts: encrypted keystores, the create CLI, and the rpc backend over a real node."""
import json

import pytest

from chain.accounts import create_keystore, keystore_accounts, main
from chain.errors import AccountError

pytestmark = pytest.mark.chain
PASSWORD_ENV = "FLB_TEST_KEYSTORE_PASSWORD"


def make_keystores(folder, num_clients: int) -> list[str]:
    names = ["admin.json"] + [f"client_{i}.json" for i in range(num_clients)]
    return [create_keystore(folder / name, "test-password", iterations=2**10) for name in names]


def test_keystores_round_trip_and_stay_encrypted(tmp_path, monkeypatch):
    addresses = make_keystores(tmp_path, 2)
    monkeypatch.setenv(PASSWORD_ENV, "test-password")
    accounts = keystore_accounts(tmp_path, PASSWORD_ENV, 2)
    assert [accounts.admin.address, *(a.address for a in accounts.clients)] == addresses
    stored = (tmp_path / "admin.json").read_text()
    assert accounts.admin.key.hex().removeprefix("0x") not in stored and "ciphertext" in stored
    assert (tmp_path / "admin.json").stat().st_mode & 0o077 == 0


def test_missing_password_and_wrong_password_say_the_fix(tmp_path, monkeypatch):
    make_keystores(tmp_path, 0)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(AccountError, match=f"{PASSWORD_ENV} is not set"):
        keystore_accounts(tmp_path, PASSWORD_ENV, 0)
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    with pytest.raises(AccountError, match="cannot decrypt"):
        keystore_accounts(tmp_path, PASSWORD_ENV, 0)


def test_create_cli_prints_the_address_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(PASSWORD_ENV, "test-password")
    out = tmp_path / "keys" / "client_0.json"
    assert main(["create", "--role", "client", "--out", str(out), "--password-env", PASSWORD_ENV]) == 0
    printed = capsys.readouterr().out
    address = "0x" + json.loads(out.read_text())["address"]
    assert address.lower() in printed.lower() and "ciphertext" not in printed
    assert main(["create", "--role", "client", "--out", str(out), "--password-env", PASSWORD_ENV]) == 1


@pytest.mark.anvil
def test_rpc_backend_with_keystores_records_a_round(tmp_path, monkeypatch, anvil, make_record):
    from web3 import Web3

    from chain.accounts import dev_accounts
    from chain.ledger import open_ledger
    from chain.transact import fee_fields
    from flb.config import ChainSettings

    keys = tmp_path / "keys"
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    funder = dev_accounts(0).admin
    for nonce, address in enumerate(make_keystores(keys, 2)):
        tx = {"to": address, "value": 10**18, "gas": 21000, "nonce": nonce, "chainId": 31337, **fee_fields(w3)}
        w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(funder.sign_transaction(tx).raw_transaction))
    monkeypatch.setenv(PASSWORD_ENV, "test-password")
    settings = ChainSettings(backend="rpc", rpc_url=anvil.url, chain_id=31337, keystore_dir=str(keys), password_env=PASSWORD_ENV)
    ledger = open_ledger(settings, tmp_path / "run", num_clients=2)
    ledger.record_data_upload(1, "sha256:" + "1a" * 32)
    ledger.record_round(make_record(1))
    assert ledger.wait_until_sent(30)
    assert ledger.get_round(1)["scores"] == [0 * 1000 + 10, 1 * 1000 + 11]
    ledger.close()


@pytest.mark.anvil
def test_rpc_backend_rejects_a_wrong_chain_id(tmp_path, anvil):
    from chain.errors import ChainError
    from chain.ledger import open_ledger
    from flb.config import ChainSettings

    with pytest.raises(ChainError, match="chain id 31337, not 5"):
        open_ledger(ChainSettings(backend="rpc", rpc_url=anvil.url, chain_id=5), tmp_path, num_clients=1)


@pytest.mark.anvil
def test_deploy_cli_deploys_with_the_admin_keystore(tmp_path, monkeypatch, anvil, capsys):
    from web3 import Web3

    from chain.accounts import dev_accounts
    from chain.deploy import main as deploy_main
    from chain.transact import fee_fields

    w3 = Web3(Web3.HTTPProvider(anvil.url))
    (admin_address,) = make_keystores(tmp_path, 0)
    tx = {"to": admin_address, "value": 10**18, "gas": 21000, "nonce": 0, "chainId": 31337, **fee_fields(w3)}
    w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(dev_accounts(0).admin.sign_transaction(tx).raw_transaction))
    monkeypatch.setenv(PASSWORD_ENV, "test-password")
    argv = ["--rpc-url", anvil.url, "--chain-id", "31337", "--keystore", str(tmp_path / "admin.json"), "--password-env", PASSWORD_ENV]
    assert deploy_main(argv) == 0
    printed = capsys.readouterr().out
    address = printed.split("chain.contract_address: ")[1].strip()
    assert w3.eth.get_code(address) and f"owner {admin_address}" in printed
