"""Connections to a chain, one per `chain.backend`: embedded py-evm, a local anvil, any JSON-RPC URL.

The embedded chain and anvil keep their state in RUN_DIR/chain/ (embedded_chain.db,
anvil_state.json), each locked against a second writer, so reopening a run directory continues
the same chain (chain/embedded.py, chain/anvil.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chain.accounts import Accounts, dev_accounts, keystore_admin
from chain.anvil import AnvilProcess, anvil_binary
from chain.errors import ChainError
from flb.run.redaction import redact_url

log = logging.getLogger(__name__)
ANVIL_STATE_FILE = "anvil_state.json"


@dataclass
class Node:
    """A chain and the run's admin account on it (clients sign with their own keys, never held here)."""

    backend: str
    description: str
    w3: object = field(repr=False)
    accounts: Accounts
    stop: Callable[[], None] = lambda: None
    anvil: AnvilProcess | None = None


def connect(settings, run_dir: Path) -> Node:
    """The chain `settings.backend` names, with its admin; an embedded chain or anvil keeps its state in
    run_dir/chain and continues it when reopened."""
    if settings.backend == "embedded":
        from chain.embedded import EMBEDDED_CHAIN_FILE

        return embedded_node(Path(run_dir) / "chain" / EMBEDDED_CHAIN_FILE, gas_limit=settings.block_gas_limit)
    if settings.backend == "anvil":
        return anvil_node(Path(run_dir) / "chain" / ANVIL_STATE_FILE)
    return rpc_node(settings)


def check_node(settings, *, in_process_clients: bool, num_clients: int) -> None:
    """What would make `connect` or the first transactions fail, checked without starting anything: anvil is
    installed; under chain.client_keys persistent, every in-process client's keystore opens (clients on other
    machines hold their own); an rpc node answers with chain.chain_id, the admin keystore opens and the admin can
    pay."""
    from flb.audit.keystore import client_keystore, keystore_password, load_keystore

    if settings.backend == "anvil":
        anvil_binary()
    if in_process_clients and settings.client_keys == "persistent":
        for i in range(num_clients):
            load_keystore(client_keystore(settings, i), keystore_password(settings.password_env))
    if settings.backend != "rpc":
        return
    from web3 import Web3

    admin = keystore_admin(settings.keystore_dir, settings.password_env).admin
    w3 = Web3(Web3.HTTPProvider(settings.rpc_url, request_kwargs={"timeout": 15}))
    try:
        actual, balance = w3.eth.chain_id, w3.eth.get_balance(admin.address)
    except OSError as exc:
        raise ChainError(
            f"chain.rpc_url: {redact_url(settings.rpc_url)} does not answer ({type(exc).__name__}); "
            "check the URL or start the node"
        ) from None
    if actual != settings.chain_id:
        raise wrong_chain(settings.rpc_url, actual, settings.chain_id)
    if balance == 0:
        raise ChainError(
            f"chain.keystore_dir: the admin account {admin.address} has no funds on chain {actual}; "
            "fund it (it pays for every record)"
        )


def embedded_node(state_file: Path | None = None, num_clients: int = 0, gas_limit: int | None = None) -> Node:
    """py-evm in process: saved to `state_file` after every block (reopened when it exists), or in memory only
    when `state_file` is None. `num_clients` dev client accounts are funded too (for tests and benchmarks). A new
    chain's blocks hold `gas_limit` gas (None: eth-tester's 30 M)."""
    from chain.embedded import DurableChain, in_memory_web3

    accounts = dev_accounts(num_clients)
    if state_file is None:
        return Node("embedded", "embedded py-evm (in process)", in_memory_web3(num_clients + 1, gas_limit), accounts)
    chain = DurableChain(state_file, num_accounts=num_clients + 1, gas_limit=gas_limit)
    return Node("embedded", embedded_description(state_file), chain.web3(), accounts, stop=chain.close)


def embedded_description(state_file: Path) -> str:
    return f"embedded py-evm (saved in {state_file})"


def anvil_node(state_file: Path) -> Node:
    from web3 import Web3

    anvil = AnvilProcess(state_file, num_accounts=10)
    anvil.start()
    w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 10}))
    return Node("anvil", f"anvil at {anvil.url}", w3, dev_accounts(0), stop=anvil.stop, anvil=anvil)


def rpc_node(settings) -> Node:
    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(settings.rpc_url, request_kwargs={"timeout": 15}))
    check_chain_id(w3, settings.chain_id, settings.rpc_url)
    accounts = keystore_admin(settings.keystore_dir, settings.password_env)
    return Node("rpc", f"rpc at {redact_url(settings.rpc_url)}", w3, accounts)


def check_chain_id(w3, expected: int, url: str) -> None:
    """Fail on a wrong chain; a node that does not answer yet is left to the outbox's retries.
    Adds the POA middleware when the chain's extraData is longer than Ethereum allows."""
    from web3.middleware import ExtraDataToPOAMiddleware

    try:
        actual = w3.eth.chain_id
        extra_data = w3.eth.get_block("latest")["extraData"]
    except OSError as exc:
        log.warning("chain at %s does not answer (%s); records wait in the outbox", redact_url(url), type(exc).__name__)
        w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
        return
    if actual != expected:
        raise wrong_chain(url, actual, expected)
    if len(extra_data) > 32:
        w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)


def wrong_chain(url: str, actual: int, expected: int) -> ChainError:
    return ChainError(
        f"chain.chain_id: {redact_url(url)} serves chain id {actual}, not {expected}; "
        "fix chain.chain_id or chain.rpc_url"
    )
