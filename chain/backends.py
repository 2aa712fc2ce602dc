"""Connections to a chain, one per `chain.backend`: embedded py-evm, a local anvil, any JSON-RPC URL."""
from __future__ import annotations

import glob
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from chain.accounts import DEV_HD_PATH, DEV_MNEMONIC, Accounts, dev_accounts, keystore_accounts
from chain.errors import ChainError

log = logging.getLogger(__name__)
CHAIN_DIR = Path(__file__).resolve().parent
ANVIL_INSTALL = "cd chain && npm ci"
ANVIL_START_TIMEOUT_S = 20.0


@dataclass
class Node:
    backend: str
    description: str
    w3: object = field(repr=False)
    accounts: Accounts
    stop: Callable[[], None] = lambda: None
    anvil: "AnvilProcess | None" = None


def connect(settings, run_dir: Path, num_clients: int) -> Node:
    """The chain `settings.backend` names, with its accounts; starts anvil when asked."""
    if settings.backend == "embedded":
        return embedded_node(num_clients)
    if settings.backend == "anvil":
        return anvil_node(run_dir / "chain" / "anvil_state.json", num_clients)
    return rpc_node(settings, num_clients)


def embedded_node(num_clients: int) -> Node:
    from eth_tester import EthereumTester, PyEVMBackend
    from web3 import EthereumTesterProvider, Web3

    backend = PyEVMBackend.from_mnemonic(DEV_MNEMONIC, num_accounts=num_clients + 1, hd_path=DEV_HD_PATH)
    w3 = Web3(EthereumTesterProvider(EthereumTester(backend)))
    return Node("embedded", "embedded py-evm (in process)", w3, dev_accounts(num_clients))


def anvil_node(state_file: Path, num_clients: int) -> Node:
    from web3 import Web3

    anvil = AnvilProcess(state_file, num_accounts=max(10, num_clients + 1))
    anvil.start()
    w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 10}))
    return Node("anvil", f"anvil at {anvil.url}", w3, dev_accounts(num_clients), stop=anvil.stop, anvil=anvil)


def rpc_node(settings, num_clients: int) -> Node:
    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(settings.rpc_url, request_kwargs={"timeout": 15}))
    check_chain_id(w3, settings.chain_id, settings.rpc_url)
    accounts = keystore_accounts(settings.keystore_dir, settings.password_env, num_clients)
    return Node("rpc", f"rpc at {settings.rpc_url}", w3, accounts)


def check_chain_id(w3, expected: int, url: str) -> None:
    """Fail on a wrong chain; a node that does not answer yet is left to the outbox's retries.
    Adds the POA middleware when the chain's extraData is longer than Ethereum allows."""
    from web3.middleware import ExtraDataToPOAMiddleware

    try:
        actual = w3.eth.chain_id
        extra_data = w3.eth.get_block("latest")["extraData"]
    except OSError as exc:
        log.warning("chain at %s does not answer (%s); records wait in the outbox", url, type(exc).__name__)
        w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
        return
    if actual != expected:
        raise wrong_chain(url, actual, expected)
    if len(extra_data) > 32:
        w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)


def wrong_chain(url: str, actual: int, expected: int) -> ChainError:
    return ChainError(f"chain.chain_id: {url} serves chain id {actual}, not {expected}; fix chain.chain_id or chain.rpc_url")


def anvil_binary() -> str:
    """The native binary of the npm package, its wrapper, or an anvil on PATH."""
    candidates = sorted(glob.glob(str(CHAIN_DIR / "node_modules/@foundry-rs/anvil-*/bin/anvil")))
    candidates += [str(CHAIN_DIR / "node_modules/.bin/anvil"), shutil.which("anvil") or ""]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ChainError(f"anvil: not installed; run `{ANVIL_INSTALL}` (or put foundry's anvil on PATH)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AnvilProcess:
    """A local anvil in its own process group, its state persisted to `state_file`."""

    def __init__(self, state_file: Path, num_accounts: int, port: int | None = None):
        self.state_file = Path(state_file)
        self.num_accounts = num_accounts
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        command = [anvil_binary(), "--host", "127.0.0.1", "--port", str(self.port), "--silent",
                   "--accounts", str(self.num_accounts), "--mnemonic", DEV_MNEMONIC,
                   "--state", str(self.state_file), "--state-interval", "1"]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + ANVIL_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode(errors="replace").strip().splitlines()
                raise ChainError(f"anvil: exited at start ({error[-1] if error else 'no output'}); "
                                 f"check that port {self.port} is free and `{ANVIL_INSTALL}` completed")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ChainError(f"anvil: no answer on port {self.port} after {ANVIL_START_TIMEOUT_S:.0f} s; "
                         "run it by hand to see why")

    def stop(self) -> None:
        """SIGTERM to the group this process leads (anvil writes its state on exit), then wait."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
