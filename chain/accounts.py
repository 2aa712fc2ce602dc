"""The admin account (the contract owner, who sends every transaction) and encrypted keystores.

Dev chains (embedded, anvil) use account 0 of the public development mnemonic their genesis funds;
real chains use the encrypted JSON keystore admin.json whose password comes from an environment
variable. Clients sign with their own keys (flb.audit.keystore; client_<i>.json on a real chain), which
this package never holds. Keys stay inside eth-account objects: never printed or logged.

    python -m chain.accounts create --role admin --out keys/admin.json
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from chain.errors import AccountError
from flb.audit.keystore import keystore_password, load_keystore, write_new_private_file

DEV_MNEMONIC = "test test test test test test test test test test test junk"  # anvil's public dev mnemonic
DEV_HD_PATH = "m/44'/60'/0'/0"


@dataclass(frozen=True)
class Accounts:
    admin: object = field(repr=False)
    clients: tuple = field(repr=False, default=())  # dev chains' funded client accounts (tests, benchmarks)


def dev_accounts(num_clients: int) -> Accounts:
    """Account 0 of the dev mnemonic is the admin, account i+1 is dev client i."""
    from eth_account import Account

    Account.enable_unaudited_hdwallet_features()
    derived = [Account.from_mnemonic(DEV_MNEMONIC, account_path=f"{DEV_HD_PATH}/{i}") for i in range(num_clients + 1)]
    return Accounts(admin=derived[0], clients=tuple(derived[1:]))


def keystore_admin(keystore_dir: str | Path | None, password_env: str) -> Accounts:
    """The admin (contract owner) from keystore_dir/admin.json; clients keep their own keystores."""
    if keystore_dir is None:
        raise AccountError(
            "chain.keystore_dir: not set; backend rpc needs the admin's admin.json keystore "
            "(create it with `python -m chain.accounts create --role admin`)"
        )
    return Accounts(admin=load_keystore(Path(keystore_dir) / "admin.json", keystore_password(password_env)))


def create_keystore(out: Path, password: str, iterations: int | None = None) -> str:
    """Write a new random account, encrypted, to `out` (never overwritten); returns its address."""
    from eth_account import Account

    if out.exists():
        raise AccountError(f"keystore {out}: already exists; choose another --out or delete it yourself")
    account = Account.create()
    keystore = Account.encrypt(account.key, password, iterations=iterations)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_new_private_file(out, json.dumps(keystore).encode())
    return account.address


def _password_for_create(password_env: str) -> str:
    if os.environ.get(password_env):
        return os.environ[password_env]
    if not sys.stdin.isatty():
        raise AccountError(f"keystore password: set {password_env} or run in a terminal to be prompted")
    password = getpass.getpass("Keystore password: ")
    if password != getpass.getpass("Repeat password: "):
        raise AccountError("keystore password: the two entries differ; run the command again")
    return password


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chain.accounts", description="Create encrypted account keystores.")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a new account in an encrypted keystore file")
    create.add_argument("--role", choices=("admin", "client"), required=True)
    create.add_argument(
        "--out", type=Path, required=True, help="keystore file, e.g. keys/admin.json or keys/client_0.json"
    )
    create.add_argument("--password-env", default="FLB_KEYSTORE_PASSWORD", help="variable holding the password")
    args = parser.parse_args(argv)
    try:
        address = create_keystore(args.out, _password_for_create(args.password_env))
    except AccountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.role} account {address} written to {args.out} (encrypted); fund it on your chain")
    return 0


if __name__ == "__main__":
    sys.exit(main())
