"""Who signs: an admin (the contract owner) and one account per client.

Dev chains (embedded, anvil) use the public development mnemonic their genesis funds; real chains
use encrypted JSON keystores (admin.json, client_<i>.json) whose password comes from an
environment variable. Keys stay inside eth-account objects: never printed, logged or written
unencrypted.

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

DEV_MNEMONIC = "test test test test test test test test test test test junk"  # anvil's public dev mnemonic
DEV_HD_PATH = "m/44'/60'/0'/0"


@dataclass(frozen=True)
class Accounts:
    admin: object = field(repr=False)
    clients: tuple = field(repr=False)

    def client(self, client_id: int):
        if not 0 <= client_id < len(self.clients):
            raise AccountError(f"client {client_id}: no account (the ledger has {len(self.clients)}); "
                               "open the ledger with num_clients covering every client id")
        return self.clients[client_id]

    def public(self) -> dict:
        return {"admin": self.admin.address, "clients": [a.address for a in self.clients]}


def dev_accounts(num_clients: int) -> Accounts:
    """Account 0 of the dev mnemonic is the admin, account i+1 is client i."""
    from eth_account import Account

    Account.enable_unaudited_hdwallet_features()
    derived = [Account.from_mnemonic(DEV_MNEMONIC, account_path=f"{DEV_HD_PATH}/{i}") for i in range(num_clients + 1)]
    return Accounts(admin=derived[0], clients=tuple(derived[1:]))


def keystore_accounts(keystore_dir: str | Path | None, password_env: str, num_clients: int) -> Accounts:
    if keystore_dir is None:
        raise AccountError("chain.keystore_dir: not set; backend rpc needs admin.json and client_<i>.json keystores "
                           "(create them with `python -m chain.accounts create`)")
    password = keystore_password(password_env)
    folder = Path(keystore_dir)
    admin = load_keystore(folder / "admin.json", password)
    clients = tuple(load_keystore(folder / f"client_{i}.json", password) for i in range(num_clients))
    return Accounts(admin=admin, clients=clients)


def keystore_password(password_env: str) -> str:
    password = os.environ.get(password_env)
    if not password:
        raise AccountError(f"keystore password: environment variable {password_env} is not set; export it before running")
    return password


def load_keystore(path: Path, password: str):
    from eth_account import Account

    if not path.is_file():
        raise AccountError(f"keystore {path}: not found; create it with "
                           f"`python -m chain.accounts create --role {_role_of(path)} --out {path}`")
    try:
        key = Account.decrypt(json.loads(path.read_text()), password)
    except ValueError:
        raise AccountError(f"keystore {path}: cannot decrypt; check the password variable") from None
    return Account.from_key(key)


def create_keystore(out: Path, password: str, iterations: int | None = None) -> str:
    """Write a new random account, encrypted, to `out` (never overwritten); returns its address."""
    from eth_account import Account

    if out.exists():
        raise AccountError(f"keystore {out}: already exists; choose another --out or delete it yourself")
    account = Account.create()
    keystore = Account.encrypt(account.key, password, iterations=iterations)
    out.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(keystore, handle)
    return account.address


def _role_of(path: Path) -> str:
    return "admin" if path.stem == "admin" else "client"


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
    create.add_argument("--out", type=Path, required=True, help="keystore file, e.g. keys/admin.json or keys/client_0.json")
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
