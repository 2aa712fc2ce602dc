"""A node's worker: the long-lived process that keeps the base model and the client loaded between messages.

Flower 1.41 starts a fresh ClientApp process for every message; importing torch and transformers and loading the
model in each took most of every round. The ClientApp (flb_flower.client_app) only hands the message to this
worker and returns its reply: the first message starts the worker, which then lives as long as the SuperNode (it
watches the ClientApp's parent, the SuperNode's flower-superexec, and that one's parent, the SuperNode: Flower's
flower-superexec outlives a SuperNode stopped alone) and builds the model and client once per run
(flb_flower.node.local_client), reading the client's private state from state-dir as before.

The socket lies in <state-dir>/worker/ (mode 0700: only the node's user reaches it) and is named after the process
the worker watches, so a restarted SuperNode starts a worker of its own. What crosses it: a JSON header (the
message type, the node config, the app's folder) and the message content as Flower's protobuf bytes; nothing is
pickled. A worker answers one message at a time. A worker of another app version (a new FAB) steps aside for a new
one. An error while answering is the reply's error, raised again in the ClientApp so the server sees the node's
reason, and the worker forgets the client so that the next message rebuilds it from the state saved in state-dir.

    python -m flb_flower.node_worker SOCKET PID[,PID]   (started by `ask`, not by hand; it ends when a PID does)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)
APP = str(Path(__file__).resolve().parents[1])  # the folder the app's packages are imported from (the FAB's)
SOCKET_PATH_LIMIT = 104  # bytes of an AF_UNIX path on Linux and macOS, less a margin
START_TIMEOUT_S = 120.0  # from starting a worker to its socket listening (its imports; the model comes later)
_SIZES = struct.Struct("<QQ")  # header bytes, body bytes


class NodeWorkerError(RuntimeError):
    """The worker could not answer: its error (type and message), or why there is no worker to ask."""


def socket_path(node_config: dict, owner: int) -> Path:
    from flb_flower.node import node_state_dir

    path = node_state_dir(node_config).resolve() / "worker" / f"{owner}.sock"
    if len(os.fsencode(path)) > SOCKET_PATH_LIMIT:
        raise NodeWorkerError(
            f"node config state-dir={str(node_state_dir(node_config))!r}: the worker's socket {path} is longer than "
            f"{SOCKET_PATH_LIMIT} bytes, the most a Unix socket's path can be; choose a shorter state-dir"
        )
    return path


def ask(node_config: dict, message_type: str, content, owner: int | None = None):
    """The reply's content (a RecordDict) to a message, from this node's worker, started first if none is running.
    `owner`: the process whose life, and whose parent's, the worker's follows (default: this process's parent,
    flower-superexec, whose parent is the SuperNode)."""
    from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

    owner = os.getppid() if owner is None else owner
    path = socket_path(node_config, owner)
    request = {"type": message_type, "node_config": dict(node_config), "app": APP}
    body = recorddict_to_proto(content).SerializeToString()
    for _ in range(2):  # a worker of another app version steps aside once
        with _connection(path, owner) as connection:
            _send(connection, request, body)
            header, reply = _receive(connection)
        if not header.get("stale"):
            break
    else:
        raise NodeWorkerError(f"the node's workers are of another app version than this ClientApp's ({APP})")
    if header.get("error"):
        raise NodeWorkerError(header["error"])
    return recorddict_from_proto(_proto_record_dict(reply))


@contextlib.contextmanager
def _connection(path: Path, owner: int):
    """A connection to the worker at `path`; one ClientApp at a time starts a worker, the others wait for it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = path.parent.stat()
    if folder.st_uid != os.getuid() or folder.st_mode & 0o077:
        raise NodeWorkerError(
            f"{path.parent}: the node's worker folder must be this user's alone (mode 0700), so no one else reaches "
            f"its socket; remove it or run `chmod 700 {path.parent}`"
        )
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        connection = _connect(path) or _start(path, owner)
    with connection:
        yield connection


def _connect(path: Path) -> socket.socket | None:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(str(path))
        return connection
    except (FileNotFoundError, ConnectionRefusedError):  # no worker, or one that has ended
        connection.close()
        path.unlink(missing_ok=True)
        return None


def _start(path: Path, owner: int) -> socket.socket:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [APP, os.environ.get("PYTHONPATH")]))}
    # -P: the app's packages come from APP (PYTHONPATH), not from whatever folder the SuperNode was started in
    followed = [owner, *[parent for parent in [_parent_of(owner)] if parent and parent > 1]]
    command = [sys.executable, "-P", "-m", "flb_flower.node_worker", str(path), ",".join(map(str, followed))]
    worker = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)  # its output: the SuperNode's
    deadline = time.monotonic() + START_TIMEOUT_S
    while (connection := _connect(path)) is None:
        if worker.poll() is not None:
            raise NodeWorkerError(
                f"the node's worker exited with code {worker.returncode} before listening; its error is above in "
                "the SuperNode's output"
            )
        if time.monotonic() > deadline:
            worker.kill()
            raise NodeWorkerError(f"the node's worker did not listen on {path} within {START_TIMEOUT_S:g}s")
        time.sleep(0.05)
    return connection


def _send(connection: socket.socket, header: dict, body: bytes = b"") -> None:
    encoded = json.dumps(header).encode()
    connection.sendall(_SIZES.pack(len(encoded), len(body)) + encoded + body)


def _receive(connection: socket.socket) -> tuple[dict, bytes]:
    header_size, body_size = _SIZES.unpack(_exactly(connection, _SIZES.size))
    return json.loads(_exactly(connection, header_size)), _exactly(connection, body_size)


def _exactly(connection: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = connection.recv(min(left, 1 << 20))
        if not chunk:
            raise NodeWorkerError("the connection to the node's worker closed mid-message (see the SuperNode's output)")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _proto_record_dict(data: bytes):
    from flwr.proto.recorddict_pb2 import RecordDict

    return RecordDict.FromString(data)


def serve(path: Path, followed: list[int]) -> None:
    """Answer messages on `path` one at a time while every process in `followed` runs (checked every second when
    idle)."""
    listener = _listen(path)
    bound = path.stat().st_ino
    log.info("node worker %d: answering on %s while processes %s run", os.getpid(), path, followed)
    try:
        while all(map(_alive, followed)):
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(None)
                if not _answer(connection):  # asked by another app version: stop listening first, then say so
                    log.info("node worker %d: a ClientApp of another app version asks; stepping aside", os.getpid())
                    _stop_listening(listener, path, bound)
                    with contextlib.suppress(OSError):
                        _send(connection, {"stale": True})
                    return
    finally:
        _stop_listening(listener, path, bound)


def _listen(path: Path) -> socket.socket:
    """A socket listening at `path`: bound under another name and renamed once it listens, so a socket at `path`
    that refuses a connection is always a worker that has ended."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fresh = path.with_suffix(f".{os.getpid()}")
    umask = os.umask(0o077)  # the socket itself: the node's user only, like the folder it lies in
    try:
        listener.bind(str(fresh))
    finally:
        os.umask(umask)
    listener.listen(16)
    listener.settimeout(1.0)
    os.replace(fresh, path)
    return listener


def _stop_listening(listener: socket.socket, path: Path, bound: int) -> None:
    listener.close()
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_ino == bound:  # not a newer worker's socket
            path.unlink()


def _answer(connection: socket.socket) -> bool:
    """Answer one request; False, with nothing sent, for a request from another app version."""
    from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

    from flb_flower import node

    try:
        request, body = _receive(connection)
        if request.get("app") != APP:
            return False
        try:
            content = recorddict_from_proto(_proto_record_dict(body))
            reply = recorddict_to_proto(node.answer(request["type"], content, request["node_config"]))
            _send(connection, {}, reply.SerializeToString())
        except Exception as exc:  # the ClientApp raises it again: Flower reports it to the server as the node's error
            node.local_client.cache_clear()  # the next message rebuilds the client from its saved state
            log.error("answering a %s message: %s: %s", request["type"], type(exc).__name__, exc)
            _send(connection, {"error": f"{type(exc).__name__}: {exc}"})
    except (OSError, ValueError, NodeWorkerError) as exc:  # the ClientApp went away (killed, timed out) or sent garbage
        log.warning("node worker %d: the ClientApp's connection broke (%s)", os.getpid(), exc)
    return True


def _parent_of(pid: int) -> int | None:
    """The parent of process `pid`: from /proc where there is one, else from `ps`; None where neither says."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
        return int(subprocess.run(["ps", "-o", "ppid=", "-p", str(pid)], capture_output=True, text=True).stdout)
    return None


def _alive(pid: int) -> bool:
    """Whether process `pid` runs: it exists and, where /proc says, is not a zombie no one has reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def main(argv: list[str] | None = None) -> None:
    import assembly

    path, followed = (argv or sys.argv[1:])[:2]
    assembly.configure_logging()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C at the SuperNode's terminal reaches its whole group
        serve(Path(path), [int(pid) for pid in followed.split(",")])


if __name__ == "__main__":  # run as the module flb_flower.node_worker, so its logger and errors are that module's
    from flb_flower import node_worker

    node_worker.main()
