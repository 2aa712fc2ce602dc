"""A SuperLink and SuperNodes on loopback, as subprocesses, for tests and benchmarks: insecure, or secure (TLS
and node authentication with the certificates and keys `python -m flb_flower.certs` makes).

The commands are built by the functions below, and the docs' multi-machine page (docs/multi-machine.md) gives the
same commands (tests/test_flower_secure.py checks it), so what the docs say is what the tests run.
Each process starts in its own process group (its pid is the group id) because SuperLink and SuperNode
start `flower-superexec` children that outlive them; stopping a process stops its whole group.
One federation at a time on the machine (the rounds' time-outs are sized for one on 2 cores): under pytest-xdist a
Loopback waits until another worker's has stopped (stop_all releases its lock).
"""

from __future__ import annotations

import fcntl
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = Path(tempfile.gettempdir()) / "flb-flower-loopback.lock"
CONNECTION = "loopback"  # the connection's name in $FLWR_HOME/config.toml
# with tiny_run_overrides: the runs compared (in process, over Flower, in worker processes); their updates and global
# adapters cross each wire compressed, top-k's residual carried in each client's private state, and client 1 drops
# out of round 2 (simulation.seed 1 draws it), so each path must leave it out alike
FLOWER_RUN = [
    "local_steps=2",
    "eval.size=8",
    "eval.max_new_tokens=2",
    "comm.compression=topk",
    "comm.topk_fraction=0.3",
    "comm.broadcast_compression=bf16",
    "simulation.dropout=0.3",
    "simulation.seed=1",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def certs_argv(credentials: Path | str, nodes: int) -> list[str]:
    return ["python", "-m", "flb_flower.certs", str(credentials), "--nodes", str(nodes)]


def superlink_argv(port: int, credentials: Path | str | None) -> list[str]:
    """With `credentials`: TLS with its certificates, and only registered SuperNodes admitted."""
    security = [
        "--ssl-ca-certfile",
        f"{credentials}/ca.crt",
        "--ssl-certfile",
        f"{credentials}/server.pem",
        "--ssl-keyfile",
        f"{credentials}/server.key",
        "--enable-supernode-auth",
    ]
    return [
        "flower-superlink",
        "--disable-runtime-dependency-installation",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *(security if credentials else ["--insecure"]),
    ]


def connection_toml(port: int, credentials: Path | str | None) -> str:
    """$FLWR_HOME/config.toml for `flwr`; Flower 1.41 takes only an absolute root-certificates path."""
    security = f'root-certificates = "{credentials}/ca.crt"' if credentials else "insecure = true"
    return (
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\n{security}\n'
    )


def register_argv(credentials: Path | str, key: str) -> list[str]:
    return ["flwr", "supernode", "register", f"{credentials}/{key}.pub", CONNECTION]


def supernode_argv(
    superlink_port: int, port: int, node_config: str, credentials: Path | str | None, key: str
) -> list[str]:
    """With `credentials`: verify the SuperLink with their CA and authenticate with the private key `key`."""
    security = (
        ["--root-certificates", f"{credentials}/ca.crt", "--auth-supernode-private-key", f"{credentials}/{key}"]
        if credentials
        else ["--insecure"]
    )
    return [
        "flower-supernode",
        "--superlink",
        f"127.0.0.1:{superlink_port}",
        *security,
        "--port",
        str(port),
        "--node-config",
        node_config,
    ]


def flwr_run_argv(run_config: str) -> list[str]:
    return ["flwr", "run", ".", CONNECTION, "--stream", "--run-config", run_config]


def node_config(partition_id: int, num_partitions: int, state_dir: Path | str, model_path: Path | None = None) -> str:
    """Node config is TOML: text values quoted (single quotes, literal strings: a backslash stays as written)."""
    settings = f"partition-id={partition_id} num-partitions={num_partitions} state-dir='{state_dir}'"
    return settings + (f" model-path='{model_path}'" if model_path else "")


class Loopback:
    """Processes of one loopback federation, secure when given `credentials` (a folder `flb_flower.certs` wrote);
    `stop_all` in a finalizer."""

    def __init__(self, work: Path, credentials: Path | None = None):
        self._lock = LOCK.open("w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # released by stop_all
        self.work, self.credentials = work, credentials
        self.home = work / "flwr-home"
        self.env = {**os.environ, "FLWR_HOME": str(self.home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        self.port = free_port()
        self.processes: list[subprocess.Popen] = []
        self.log_files: dict[int, Path] = {}  # pid -> its output

    def start_superlink(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(connection_toml(self.port, self.credentials))
        self._start("superlink", superlink_argv(self.port, self.credentials))
        wait_for_port(self.port, timeout_s=30)

    def register(self, key: str) -> None:
        """`flwr supernode register` the public key of SuperNode key pair `key` (e.g. node-0)."""
        done = subprocess.run(
            register_argv(self.credentials, key), cwd=REPO, env=self.env, capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise RuntimeError(f"flwr supernode register {key}.pub failed:\n{done.stdout}{done.stderr}")

    def state_dir(self, partition_id: int) -> Path:
        """Where the node serving `partition_id` keeps its secrets (a node started again for it reuses it, as a
        restarted machine would)."""
        return self.work / f"node-{partition_id}-state"

    def start_supernode(
        self, partition_id: int, num_partitions: int, key: str | None = None, model_path: Path | None = None
    ) -> subprocess.Popen:
        """A SuperNode serving `partition_id`; when secure, it authenticates with key pair `key` (default
        node-<partition_id>) and loads the base model from `model_path` when given (its own copy)."""
        config = node_config(partition_id, num_partitions, self.state_dir(partition_id), model_path)
        argv = supernode_argv(self.port, free_port(), config, self.credentials, key or f"node-{partition_id}")
        return self._start(f"supernode-{partition_id}-{len(self.processes)}", argv)

    def flwr_run(self, flb_args: list[str], timeout_s: float, **run_config) -> subprocess.Popen:
        """`flwr run . loopback --stream` with main_simple_fl flags in flb-args; returns the running process."""
        settings = {"flb-args": shlex.join(flb_args), **run_config}
        pairs = " ".join(f"{key}={_toml(value)}" for key, value in settings.items())
        return self._start("flwr-run", ["timeout", str(int(timeout_s)), *flwr_run_argv(pairs)])

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen:
        path = self.work / f"{name}.log"
        with open(path, "w") as log:
            process = subprocess.Popen(
                argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes.append(process)
        self.log_files[process.pid] = path
        return process

    def received(self, node: subprocess.Popen, message_type: str) -> int:
        """How many `message_type` messages the SuperNode has taken in so far (as its log says)."""
        return self.log_files[node.pid].read_text().count(f"Receiving: {message_type} message")

    def wait_until_received(self, node: subprocess.Popen, message_type: str, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.received(node, message_type) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the SuperNode did not receive {count} {message_type} messages in {timeout_s:g}s")
            time.sleep(0.1)

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            stop(process)
        self._lock.close()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.work.glob("*.log")))


def wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:g}s; see the SuperLink's log")


def stop(process: subprocess.Popen) -> None:
    """SIGKILL the process group led by `process` (it and every child it started) and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


def _toml(value) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)
