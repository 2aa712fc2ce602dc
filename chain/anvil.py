"""A local anvil whose lifetime and state file belong to the run that started it.

- It dies with the process that started it, however that process dies (kill -9 included): on
  Linux anvil is exec'd through a tiny Python step that sets PR_SET_PDEATHSIG to SIGTERM, and
  anvil writes its state on SIGTERM. The kernel sends that signal when the *thread* that forked
  the child exits, so every anvil is forked by one launcher thread that lives as long as the
  process, never by the (possibly short-lived) caller's thread. No preexec_fn: forking Python
  code into a child is unsafe while other threads run (the ledger's sender, torch).
- Only one process writes its state file: an exclusive lock (chain.locks) is taken before anvil
  starts and passed to anvil, so it is held until both this process has let go and anvil has
  exited, i.e. after anvil's last state write.
- `--state-interval 1` stays: a run killed with kill -9 loses nothing (anvil gets SIGTERM and
  writes its whole state), but anvil itself killed with SIGKILL (the OOM killer, kill -9 of anvil)
  would otherwise lose up to anvil's default of 60 s of chain; with it, at most the last second.
  anvil writes the file in place (not atomically), so a SIGKILL in the middle of a write can tear
  it: start() then refuses it with a one-line error instead of anvil's parse failure.
- It runs in its own session, so the terminal's Ctrl-C reaches the run (which closes its ledger
  and then stops anvil) and not anvil directly; stop() ends the whole process group.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from chain.accounts import DEV_MNEMONIC
from chain.errors import ChainError
from chain.locks import StateLock

CHAIN_DIR = Path(__file__).resolve().parent
ANVIL_INSTALL = "cd chain && npm ci"
ANVIL_START_TIMEOUT_S = 20.0
ANVIL_STOP_TIMEOUT_S = 10.0
STATE_INTERVAL_S = 1

# argv: parent pid, program, its arguments. The pid check closes the race of a parent that died
# before prctl: the signal would then never come.
_EXEC_WITH_PARENT_DEATH_SIGNAL = (
    "import ctypes, os, signal, sys\n"
    "PR_SET_PDEATHSIG = 1\n"
    "if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:\n"
    "    sys.exit('prctl(PR_SET_PDEATHSIG) failed: errno %d' % ctypes.get_errno())\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('parent exited before anvil started')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)

# Its single worker waits for work until the interpreter shuts down (concurrent.futures joins it
# then), so the parent-death signal fires when the process ends, never while the run goes on.
_LAUNCHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flb-anvil-launcher")


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
    """A local anvil on 127.0.0.1, its state persisted to `state_file`; errors go to `<state>.log` beside it.
    start() and stop() may alternate (a restart reloads the state)."""

    def __init__(self, state_file: Path, num_accounts: int, port: int | None = None):
        self.state_file = Path(state_file)
        self.num_accounts = num_accounts
        self.port = port or free_port()
        self.log_file = self.state_file.with_suffix(".log")
        self.process: subprocess.Popen | None = None
        self._lock = StateLock(self.state_file, "anvil state")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start anvil on the saved state (nothing when it runs); a ChainError when another process
        holds the state file."""
        if self.process is not None and self.process.poll() is None:
            return
        self._lock.acquire()
        try:
            self._check_state_file()
            self.process = _LAUNCHER.submit(self._spawn).result()
            self._lock.name_holder(f"process {os.getpid()} (anvil {self.process.pid})")
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM to anvil's process group (anvil writes its state on exit), wait, release the state file."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it may exit on its own meanwhile
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=ANVIL_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._lock.release()

    def _command(self) -> list[str]:
        command = [
            anvil_binary(),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--silent",
            "--accounts",
            str(self.num_accounts),
            "--mnemonic",
            DEV_MNEMONIC,
            "--state",
            str(self.state_file),
            "--state-interval",
            str(STATE_INTERVAL_S),
        ]
        if sys.platform.startswith("linux"):
            return [sys.executable, "-I", "-S", "-c", _EXEC_WITH_PARENT_DEATH_SIGNAL, str(os.getpid()), *command]
        return command  # elsewhere no parent-death signal: stop() it, or it outlives a killed run

    def _spawn(self) -> subprocess.Popen:
        with open(self.log_file, "ab") as log:
            return subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
                pass_fds=(self._lock.fd,),
            )

    def _check_state_file(self) -> None:
        if not self.state_file.exists():
            return
        try:
            json.loads(self.state_file.read_bytes())
        except ValueError:
            raise ChainError(
                f"anvil state {self.state_file}: not valid JSON (anvil was killed while writing it); "
                "move it away to start a new chain (the ledger then sends the run's records again)"
            ) from None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + ANVIL_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ChainError(
                    f"anvil: exited at start ({self._last_log_line()}); check that port {self.port} "
                    f"is free and `{ANVIL_INSTALL}` completed"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise ChainError(
            f"anvil: no answer on port {self.port} after {ANVIL_START_TIMEOUT_S:.0f} s; "
            f"see {self.log_file} or run it by hand to see why"
        )

    def _last_log_line(self) -> str:
        lines = self.log_file.read_text(errors="replace").strip().splitlines() if self.log_file.exists() else []
        return lines[-1][:300] if lines else "no output"
