"""Run untrusted Python programs (model-written code and its tests) away from the training process.

Every program runs in its own `python -I -B` process, never in this one. What the sandbox does:
- a fresh scratch directory (mode 0700) is the program's working directory; it is removed afterwards;
- the environment is empty and stdin holds only a one-time token; stdout and stderr go to unlinked temporary
  files, so no pipe can fill up and block, and nothing the program prints can flood this process's memory;
- a wall-clock time-out kills the whole process group (SIGKILL), so a loop or a sleep cannot hang evaluation;
- before the program is even compiled, its process sets hard resource limits: address space (memory_mb), CPU
  seconds (a backstop to the wall clock), file size (so output and files stay small), no core dumps, 64 open
  files, and no new processes or threads (RLIMIT_NPROC 0, which the kernel enforces for users other than root);
- no network: where `unshare --user --map-root-user --net` works (checked once per process), the program runs
  in new user and network namespaces that have no interface up, so even code outside Python's reach (a C
  extension) can reach no address, 127.0.0.1 included; in any case, an audit hook (PEP 578; it cannot be
  removed once added) refuses every socket operation, process creation (fork, exec, spawn, system, subprocess),
  signals to other processes, ctypes and _posixsubprocess, resource-limit changes, and any change to the file
  system outside the scratch directory (writes, removals, renames, chmod, links; all with a dir_fd);
- a program passes only when it exits with status 0 after its last statement ran (the runner then writes the
  token), so `sys.exit(0)` or `os._exit(0)` halfway through does not count as a pass.

What it does NOT protect against (do not run code from a source you would not run in your own account):
- reading files: the program can read whatever the user running FLB can read (though, without the network, it
  can only leak it through its exit status); run FLB as a user without access to secrets if that matters;
- a deliberate escape from the Python-level guards: the audit hook is a speed bump for code that means harm
  (an object-graph walk can find the token, a C extension already loaded can make system calls). Without the
  namespaces (where unshare is missing or refused, as in many containers) the network guard is that hook alone;
- kernel exploits, and programs that outlive a killed parent (the CPU limit ends busy ones; a sleeping one
  would stay until its process group is killed); there is no file-system view restriction (no chroot/mount
  namespace) and no seccomp filter. For hostile code, run the evaluation in a disposable VM or container.
"""

from __future__ import annotations

import functools
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

PROGRAM_FILE = "program.py"
MAX_FILE_BYTES = 16 * 2**20
OUTPUT_TAIL_BYTES = 4096

# Runs as the child's first code (python -I -c), with argv: memory bytes, CPU seconds, file-size bytes. It reads
# the token, limits itself, installs the audit hook, then compiles and runs program.py in fresh globals; the token is
# written only when the program's last statement has run.
_RUNNER = r"""
import os, resource, sys
_root = os.path.realpath(os.getcwd())
_refused = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg",
            "subprocess.Popen", "pty.spawn", "resource.setrlimit", "resource.prlimit", "os.link", "os.symlink",
            "sys.remote_exec"}
_refused_imports = {"ctypes", "_ctypes", "_posixsubprocess", "cffi", "_cffi_backend"}
# event: (positions of the paths it changes, positions of its dir_fd arguments)
_path_changes = {"os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.mkdir": ((0,), (2,)),
                 "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)), "os.chflags": ((0,), ()),
                 "os.truncate": ((0,), ()), "os.utime": ((0,), (3,)), "os.setxattr": ((0,), ()),
                 "os.removexattr": ((0,), ()), "os.rename": ((0, 1), (2, 3)), "shutil.rmtree": ((0,), (1,)),
                 "shutil.move": ((0, 1), ()), "shutil.chown": ((0,), ())}
_write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

def _inside(path):
    if isinstance(path, int):
        return True  # an open descriptor: only 0, 1 and 2 are inherited
    path = os.fsdecode(path)
    resolved = os.path.realpath(os.path.join(_root, path))
    return resolved == _root or resolved.startswith(_root + os.sep)

def _guard(event, args):
    if event in _refused or event.startswith(("socket.", "ctypes.")):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "import" and args[0] in _refused_imports:
        raise PermissionError(f"sandbox: import {args[0]} is not allowed")
    if event == "open":
        path, mode, flags = args
        if mode is None and flags & _write_flags:  # os.open: its dir_fd is not in the event, so no writes at all
            raise PermissionError("sandbox: os.open for writing is not allowed")
        if isinstance(mode, str) and any(c in mode for c in "wax+") and not _inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the scratch directory is not allowed")
    elif event in _path_changes:
        paths, dir_fds = _path_changes[event]
        if any(args[i] not in (None, -1) for i in dir_fds):  # -1: no dir_fd given
            raise PermissionError(f"sandbox: {event} with a dir_fd is not allowed")
        if not all(_inside(args[i]) for i in paths):
            raise PermissionError(f"sandbox: {event} outside the scratch directory is not allowed")

def _run():  # the token stays a local here: `import __main__` in the program does not find it
    token = sys.stdin.readline().strip()
    memory, cpu, fsize = (int(value) for value in sys.argv[1:4])
    for limit, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, fsize),
                         (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_NPROC, 0)):
        resource.setrlimit(limit, (value, value))
    sys.addaudithook(_guard)
    with open("program.py", encoding="utf-8") as file:
        code = compile(file.read(), "program.py", "exec")
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(1, ("\n" + token + "\n").encode())

_run()
"""


@dataclass(frozen=True)
class Outcome:
    """How one program ended: passed, failed (detail: the last line of its stderr, or the signal) or timed out."""

    status: str
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.cache
def network_namespace_command() -> tuple[str, ...]:
    """The unshare prefix that puts a program in new user and network namespaces, or () where that does not work
    here (no unshare, unprivileged user namespaces disabled, a container's seccomp profile)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    prefix = (unshare, "--user", "--map-root-user", "--net", "--")
    probe = (
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\nexcept OSError as e:\n"
        "    raise SystemExit(0 if e.errno == 101 else 1)\nraise SystemExit(1)"
    )  # 101: network unreachable
    try:
        completed = subprocess.run(
            [*prefix, sys.executable, "-I", "-c", probe],
            env={},
            capture_output=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return prefix if completed.returncode == 0 else ()


def isolation() -> str:
    """In words, how programs are kept off the network on this machine."""
    return "network namespace + audit hook" if network_namespace_command() else "audit hook only (no unshare)"


def run_program(source: str, *, timeout_s: float, memory_mb: int, scratch_root: str | Path | None = None) -> Outcome:
    """Run `source` in a sandboxed process (see the module docstring) and say how it ended."""
    scratch = Path(tempfile.mkdtemp(prefix="flb-sandbox-", dir=scratch_root))
    try:
        (scratch / PROGRAM_FILE).write_text(source, encoding="utf-8")
        return _run_in(scratch, timeout_s=timeout_s, memory_mb=memory_mb)
    finally:
        _remove_tree(scratch)


def run_programs(
    sources: list[str], *, timeout_s: float, memory_mb: int, workers: int = 2, scratch_root: str | Path | None = None
) -> list[Outcome]:
    """`run_program` over `sources`, `workers` at a time (threads that only wait for their child process)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(
            pool.map(
                lambda source: run_program(source, timeout_s=timeout_s, memory_mb=memory_mb, scratch_root=scratch_root),
                sources,
            )
        )


def _run_in(scratch: Path, *, timeout_s: float, memory_mb: int) -> Outcome:
    token = secrets.token_hex(16)
    limits = [str(memory_mb * 2**20), str(math.ceil(timeout_s) + 1), str(MAX_FILE_BYTES)]
    command = [*network_namespace_command(), sys.executable, "-I", "-B", "-c", _RUNNER, *limits]
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            command, cwd=scratch, env={}, stdin=subprocess.PIPE, stdout=stdout, stderr=stderr, start_new_session=True
        )
        try:
            process.stdin.write(f"{token}\n".encode())
            process.stdin.close()
        except BrokenPipeError:  # it ended before reading the token: its status says how
            pass
        try:
            returncode = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            process.wait()
            return Outcome("timed out", f"killed after {timeout_s:g} s")
        _kill_group(process.pid)  # anything it left behind in its group
        if returncode == 0 and token in _tail(stdout):
            return Outcome("passed")
        if returncode < 0:
            return Outcome("failed", f"killed by {signal.Signals(-returncode).name}")
        return Outcome("failed", _last_line(_tail(stderr)) or f"exit status {returncode}")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group is already gone
        pass


def _tail(handle) -> str:
    handle.seek(0, os.SEEK_END)
    handle.seek(max(0, handle.tell() - OUTPUT_TAIL_BYTES))
    return handle.read().decode("utf-8", errors="replace")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _remove_tree(path: Path) -> None:
    """Remove the scratch directory, even where the program took its own permissions away from a folder in it
    (the program is dead by now: its process group was killed)."""
    os.chmod(path, 0o700)
    for folder, subfolders, _files in os.walk(path):
        for name in subfolders:
            subfolder = os.path.join(folder, name)
            if not os.path.islink(subfolder):
                os.chmod(subfolder, 0o700)
    shutil.rmtree(path)
