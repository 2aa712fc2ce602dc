"""Whole runs of the tiny model through main_simple_fl, recorded on a chain, that must not end silently: a client
that crashes, an admin that cannot pay, a run killed with kill -9 (no anvil left behind, --resume works)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import main_simple_fl
from chain import explorer
from chain.trail import read_trail
from tests.chain.conftest import run_overrides

pytestmark = pytest.mark.chain
REPO = Path(__file__).resolve().parents[1]
PASSWORD_ENV = "FLB_TEST_KEYSTORE_PASSWORD"
anvil_installed = pytest.mark.skipif(
    not (REPO / "chain" / "node_modules").is_dir(), reason="chain/node_modules is absent; run `cd chain && npm ci`"
)


def as_flags(overrides: list[str]) -> list[str]:
    return [flag for override in overrides for flag in ("--set", override)]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def verify_exit_code(run_dir: Path) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return explorer.main([str(run_dir), "--verify"])


def raise_in_client_1_round_2(patch) -> None:
    from client.sft import SFTClient

    fit = SFTClient.fit

    def crashing_fit(self, global_adapter, round, extras=None):
        if self.client_id == 1 and round == 2:
            raise RuntimeError("simulated out of memory")
        return fit(self, global_adapter, round, extras)

    patch.setattr(SFTClient, "fit", crashing_fit)


@pytest.fixture
def copy_run_dir(tmp_path):
    """copy_run_dir(run_dir) -> a copy of that run directory to resume."""
    import shutil

    return lambda run_dir: Path(shutil.copytree(run_dir, tmp_path / run_dir.name, symlinks=True))


@pytest.fixture(scope="module")
def crashed_run(tiny_model_dir, tmp_path_factory):
    """main on a 2-round run with quality scores whose client 1 raises RuntimeError in round 2:
    (exit code, stderr, run directory)."""
    output = tmp_path_factory.mktemp("crashed-runs")
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
        raise_in_client_1_round_2(patch)
        code = main_simple_fl.main(as_flags(run_overrides(tiny_model_dir, output, "chain.scoring=quality")))
    return code, stderr.getvalue(), (output / "latest").resolve()


def test_a_client_that_crashes_fails_the_run_with_one_line(crashed_run):
    code, stderr, run_dir = crashed_run
    assert code == 3
    (error,) = error_lines(stderr)
    assert error.startswith("error: round 2: client 1 failed with RuntimeError: simulated out of memory")
    assert "server.max_client_failures = 0" in error


def test_rounds_before_the_crash_are_saved_and_recorded(crashed_run):
    _, _, run_dir = crashed_run
    assert json.loads((run_dir / "checkpoint.json").read_text())["round"] == 1
    assert (run_dir / "round_1" / "adapter_model.safetensors").is_file()
    assert not (run_dir / "round_2").exists() and not (run_dir / "final_adapter").exists()
    assert sorted(explorer.rounds_from(read_trail(run_dir))) == [0, 1]


def test_quality_scores_are_leave_one_out_and_recorded(crashed_run):
    _, _, run_dir = crashed_run
    round_1 = next(r for r in metrics(run_dir) if r["kind"] == "round" and r["round"] == 1)
    assert len(round_1["scores"]) == 2 and all(isinstance(s, int) and s >= 0 for s in round_1["scores"])
    recorded = explorer.rounds_from(read_trail(run_dir))[1]
    addresses = json.loads((run_dir / "chain" / "accounts.json").read_text())["clients"]
    by_client = dict(zip(recorded["clients"], recorded["scores"]))
    assert [by_client[address] for address in addresses] == round_1["scores"]


def test_a_tolerated_client_crash_is_a_rejection(crashed_run, copy_run_dir, monkeypatch, capsys):
    run_dir = copy_run_dir(crashed_run[2])
    raise_in_client_1_round_2(monkeypatch)
    assert main_simple_fl.main(["--resume", str(run_dir), "--set", "server.max_client_failures=1"]) == 0
    round_2 = next(r for r in metrics(run_dir) if r["kind"] == "round" and r["round"] == 2)
    assert round_2["num_clients"] == 1
    assert round_2["rejected"] == [{"client_id": 1, "reason": "RuntimeError: simulated out of memory"}]
    assert f"python -m chain.explorer {run_dir} --verify" in capsys.readouterr().out
    assert verify_exit_code(run_dir) == 0


@pytest.fixture
def anvil(tmp_path):
    """A fresh anvil, the node of an rpc run."""
    from chain.anvil import AnvilProcess

    node = AnvilProcess(tmp_path / "node" / "anvil_state.json", num_accounts=1)
    node.start()
    yield node
    node.stop()


@pytest.mark.anvil
@anvil_installed
def test_a_run_whose_admin_cannot_pay_is_refused_before_it_starts(tiny_model_dir, tmp_path, anvil, monkeypatch, capsys):
    from chain.accounts import create_keystore

    keys = tmp_path / "keys"
    admin = create_keystore(keys / "admin.json", "pw", iterations=2**10)  # never funded
    for i in range(2):
        create_keystore(keys / f"client_{i}.json", "pw", iterations=2**10)
    monkeypatch.setenv(PASSWORD_ENV, "pw")
    output = tmp_path / "runs"
    overrides = run_overrides(
        tiny_model_dir,
        output,
        "chain.backend=rpc",
        f"chain.rpc_url={anvil.url}",
        "chain.chain_id=31337",
        f"chain.keystore_dir={keys}",
        f"chain.password_env={PASSWORD_ENV}",
    )
    assert main_simple_fl.main(as_flags(overrides)) == 2
    (error,) = error_lines(capsys.readouterr().err)
    assert error.startswith(f"error: chain.keystore_dir: the admin account {admin} has no funds")
    assert not output.exists()


# --- kill -9 ---------------------------------------------------------------------------------------


def live_anvils_of(run_dir: Path) -> list[int]:
    """Pids of running (not zombie) processes whose command line names anvil and this run directory."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # it exited meanwhile
        if "anvil" in cmdline and str(run_dir) in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


def is_running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def checkpoint_round(run_dir: Path) -> int | None:
    try:
        return json.loads((run_dir / "checkpoint.json").read_text())["round"]
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def cli_run(tmp_path: Path, output: Path, overrides: list[str]):
    """main_simple_fl.py with `overrides` in a subprocess, its stderr in tmp_path/run.err: yields the process and
    its run directory in `output` once that exists; a process still running when the block ends is killed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with open(tmp_path / "run.err", "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "main_simple_fl.py", *as_flags(overrides)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        yield (
            process,
            wait_for(lambda: (output / "latest").exists() and (output / "latest").resolve(), 120, "the run dir"),
        )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_ctrl_c_mid_round_keeps_the_rounds_before_and_prints_the_resume_command(tiny_model_dir, tmp_path):
    """A real SIGINT while round 2 trains: the round is abandoned, round 1 (shown as it completed, with the bars of
    its evaluation) stays saved and recorded, one line says how to go on, and the resumed run verifies."""
    output = tmp_path / "runs"
    with cli_run(tmp_path, output, run_overrides(tiny_model_dir, output, "local_steps=4")) as (process, run_dir):
        wait_for(lambda: checkpoint_round(run_dir) == 1, 180, "round 1's checkpoint")  # then round 2 trains
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
    stderr = (tmp_path / "run.err").read_text()
    assert "Traceback" not in stderr and "Warning" not in stderr  # nothing a user cannot act on
    shown = [line for line in stderr.splitlines() if line.replace("\x1b[A", "").strip()]  # not a bar cleared at exit
    assert shown[-1] == (
        f"stopped by SIGINT: rounds up to 1 are saved in {run_dir}; resume with: python "
        f"main_simple_fl.py --resume {run_dir}"
    )
    assert "eval loss:" in stderr and "eval exact_match:" in stderr
    round_1 = [m for m in metrics(run_dir) if m["kind"] == "round" and m["round"] == 1][0]
    line = f"round 1/2 (2 clients): eval_loss {round_1['eval_loss']:.4f}"
    assert line in stderr and line in (run_dir / "run.log").read_text()
    assert checkpoint_round(run_dir) == 1 and not (run_dir / "summary.json").exists()

    assert main_simple_fl.main(["--resume", str(run_dir)]) == 0
    assert verify_exit_code(run_dir) == 0


@pytest.mark.anvil
@anvil_installed
def test_a_run_killed_with_sigkill_leaves_no_anvil_and_resumes(tiny_model_dir, tmp_path):
    output = tmp_path / "runs"
    overrides = run_overrides(tiny_model_dir, output, "chain.backend=anvil", "num_rounds=1")
    with cli_run(tmp_path, output, overrides) as (process, run_dir):
        wait_for(lambda: checkpoint_round(run_dir) == 0, 180, "round 0's checkpoint")  # then round 1 trains
        lock = (run_dir / "chain" / "anvil_state.json.lock").read_text()
        anvil_pid = int(lock.split("(anvil ")[1].rstrip(")\n"))
        assert is_running(anvil_pid) and live_anvils_of(run_dir) == [anvil_pid]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    wait_for(lambda: not is_running(anvil_pid), 20, f"anvil {anvil_pid} to exit after its run was killed")
    assert live_anvils_of(run_dir) == []
    assert checkpoint_round(run_dir) == 0  # killed mid-run: round 1 never completed

    assert main_simple_fl.main(["--resume", str(run_dir)]) == 0
    assert sorted(explorer.rounds_from(read_trail(run_dir))) == [0, 1]
    assert verify_exit_code(run_dir) == 0
    assert live_anvils_of(run_dir) == []
