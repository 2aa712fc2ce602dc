"""Signing keys: each party holds its own and never sends, prints or logs it.

An encrypted eth-account keystore (scrypt JSON) whose password comes from an environment variable (the admin's on
a real chain; a client's under chain.client_keys persistent); or a key created for the run in its owner's private
directory (a file only its owner can read, like an SSH key): a client's under chain.client_keys fresh, so two runs
cannot be linked by its address. eth_account is imported inside the functions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flb.atomic import write_atomic
from flb.errors import FLBError

RUN_KEY_FILE = "signing_key"


class KeystoreError(FLBError):
    """A keystore is missing, unreadable, or its password is not set."""


def write_new_private_file(path: Path, data: bytes) -> None:
    """Create `path` readable by its owner only (mode 600 from the first byte) holding `data`, atomically (a crash
    leaves no half-written key); an existing file is never overwritten (FileExistsError)."""
    write_atomic(path, data, 0o600, overwrite=False)


def keystore_password(password_env: str) -> str:
    password = os.environ.get(password_env)
    if not password:
        raise KeystoreError(
            f"keystore password: environment variable {password_env} is not set; export it before running"
        )
    return password


def load_keystore(path: str | Path, password: str):
    """The account in an encrypted keystore file."""
    from eth_account import Account

    path = Path(path)
    if not path.is_file():
        raise KeystoreError(
            f"keystore {path}: not found; create it with "
            f"`python -m chain.accounts create --role {_role_of(path)} --out {path}`"
        )
    try:
        key = Account.decrypt(json.loads(path.read_text()), password)
    except ValueError:
        raise KeystoreError(f"keystore {path}: cannot decrypt; check the password variable") from None
    return Account.from_key(key)


def client_keystore(settings, client_id: int) -> Path | None:
    """Which key in-process client `client_id` signs with, by chain.client_keys (`settings`: flb.config.ChainSettings):
    None under fresh (a key made for the run in its private directory: run_key_account), keystore_dir/client_<i>.json
    under persistent."""
    if settings.client_keys == "fresh":
        return None
    if settings.keystore_dir is None:
        raise KeystoreError(
            "chain.client_keys: persistent needs chain.keystore_dir, the folder holding each client's "
            "client_<i>.json; set it, or use chain.client_keys fresh"
        )
    return Path(settings.keystore_dir) / f"client_{client_id}.json"


def node_keystore(settings, keystore: str) -> Path | None:
    """Which key a Flower node signs with: None under chain.client_keys fresh (a key made for the run in its state-dir,
    even when its node config names a `keystore`), its node config `keystore` under persistent."""
    if settings.client_keys == "fresh":
        return None
    if not keystore:
        raise KeystoreError(
            "chain.client_keys: persistent, but this node's config names no keystore; start the "
            "SuperNode with --node-config \"... keystore='/path/client.json'\""
        )
    return Path(keystore)


def run_key_account(private_dir: str | Path):
    """The account whose key lives in `private_dir`, created there (mode 600) on first use."""
    from eth_account import Account

    path = Path(private_dir) / RUN_KEY_FILE
    if not path.is_file():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_new_private_file(path, Account.create().key.hex().encode())
    try:
        return Account.from_key(bytes.fromhex(path.read_text().strip().removeprefix("0x")))
    except ValueError:
        raise KeystoreError(
            f"{path}: not a private key; delete it only if this party has recorded nothing yet"
        ) from None


def _role_of(path: Path) -> str:
    return "admin" if path.stem == "admin" else "client"
