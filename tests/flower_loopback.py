"""A SuperLink and SuperNodes on loopback, as subprocesses, for tests and benchmarks.

Each process starts in its own process group (its pid is the group id) because SuperLink and SuperNode
start `flower-superexec` children that outlive them; stopping a process stops its whole group.
"""
from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Loopback:
    """Processes of one insecure loopback federation; `stop_all` in a finalizer."""

    def __init__(self, work: Path):
        self.work = work
        self.home = work / "flwr-home"
        self.env = {**os.environ, "FLWR_HOME": str(self.home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        self.port = free_port()
        self.processes: list[subprocess.Popen] = []
        self.log_files: dict[int, Path] = {}  # pid -> its output

    def start_superlink(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n')
        self._start("superlink", ["flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
                                  "--host", "127.0.0.1", "--port", str(self.port)])
        wait_for_port(self.port, timeout_s=30)

    def state_dir(self, partition_id: int) -> Path:
        """Where the node serving `partition_id` keeps its secrets (a node started again for it reuses it, as a
        restarted machine would)."""
        return self.work / f"node-{partition_id}-state"

    def start_supernode(self, partition_id: int, num_partitions: int) -> subprocess.Popen:
        node_config = f'partition-id={partition_id} num-partitions={num_partitions} state-dir="{self.state_dir(partition_id)}"'
        return self._start(f"supernode-{partition_id}-{len(self.processes)}", [
            "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{self.port}", "--port", str(free_port()),
            "--node-config", node_config])

    def flwr_run(self, flb_args: list[str], timeout_s: float, **run_config) -> subprocess.Popen:
        """`flwr run . local --stream` with main_simple_fl flags in flb-args; returns the running process."""
        settings = {"flb-args": shlex.join(flb_args), **run_config}
        pairs = " ".join(f"{key}={_toml(value)}" for key, value in settings.items())
        return self._start("flwr-run", ["timeout", str(int(timeout_s)), "flwr", "run", ".", "local", "--stream",
                                        "--run-config", pairs])

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen:
        path = self.work / f"{name}.log"
        with open(path, "w") as log:
            process = subprocess.Popen(argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
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
