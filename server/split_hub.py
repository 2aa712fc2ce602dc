"""Split learning over the network: the server's gRPC endpoint, where client processes (client.split_node) fetch
their work and run their sessions with the trunk.

A client asks for the run's config, builds its part and its shard, says hello (its id, example count and signing
address) and gets a token that every later frame carries, then polls for jobs: bind (sign for the run's ledger),
upload (its signed data record), fit (a round: the global adapter and the strategy's extras; it runs its session
with the trunk, whose frames go to server.split_trunk.TrunkServer, then sends its update), stop. The coordinator drives
the clients as ProxyClients, one at a time, so the trunk serves one session at once. A client that sends nothing for
split.timeout_s while the server waits on it, or whose process ends (loopback), has failed; that failure counts
against server.max_client_failures as any client's.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

from flb.errors import FLBError, RunFailed, first_line
from flb.frames import decode_frame, encode_frame, frame_header, grouped, ungrouped
from flb.split.cut import SplitError
from flb.types import AdapterState, ClientUpdate, ProxyClient, SignedUpload, update_from_header
from server.split_trunk import TrunkServer

log = logging.getLogger(__name__)
TRUNK_OPS = ("open", "forward", "backward", "close")
POLL_S = 1.0  # how long a client's `next` waits for a job before it is told to ask again
REPO = Path(__file__).resolve().parent.parent


class SplitClientLost(FLBError):
    """A client stopped answering or its process ended while the server waited on it."""


class SplitHub:
    def __init__(self, trunk: TrunkServer, config, run_id: str):
        self.trunk, self.config, self.run_id = trunk, config, run_id
        self.num_clients, self.timeout_s = config.num_clients, config.split.timeout_s
        self.jobs = {i: queue.Queue() for i in range(self.num_clients)}
        self.results = {i: queue.Queue() for i in range(self.num_clients)}
        self.hello: dict[int, dict] = {}
        self.tokens: dict[str, int] = {}
        self.last_seen: dict[int, float] = {}
        self.processes: dict[int, subprocess.Popen] = {}
        self.lock = threading.Lock()
        self.joined = threading.Condition(self.lock)

    def __enter__(self) -> SplitHub:
        from flb.split.grpc_channel import serve

        split = self.config.split
        address = "127.0.0.1:0" if split.channel == "loopback" else split.address
        self.server, self.port = serve(self.handle, address)
        log.info("split: serving the trunk on %s", address.rsplit(":", 1)[0] + f":{self.port}")
        if split.channel == "loopback":
            self._start_loopback_clients()
        return self

    def __exit__(self, *exc) -> None:
        for client_id in self.hello:
            self.jobs[client_id].put(({"kind": "stop"}, {}))
        fetched_by = time.monotonic() + 10
        while any(not self.jobs[i].empty() for i in self.hello) and time.monotonic() < fetched_by:
            time.sleep(0.1)  # let the clients fetch their stop before the server goes away
        deadline = time.monotonic() + 30
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.server.stop(grace=2).wait()

    def _start_loopback_clients(self) -> None:
        """split.channel loopback: one client process per client on this machine, its state in the run
        directory's nodes/client_<i>/."""
        run_dir = Path(self.config.output_dir) / self.run_id
        for client_id in range(self.num_clients):
            state_dir = run_dir / "nodes" / f"client_{client_id}"
            state_dir.mkdir(parents=True, exist_ok=True)
            log_file = open(state_dir / "node.log", "ab")
            self.processes[client_id] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "client.split_node",
                    "--server",
                    f"127.0.0.1:{self.port}",
                    "--client-id",
                    str(client_id),
                    "--state-dir",
                    str(state_dir),
                ],
                cwd=REPO,
                stdout=log_file,
                stderr=log_file,
            )
            log_file.close()

    # what the coordinator calls

    def join(self) -> list[ProxyClient]:
        """Wait for every client's hello (split.timeout_s at most); their proxies."""
        deadline = time.monotonic() + self.timeout_s
        with self.joined:
            while len(self.hello) < self.num_clients:
                self._check_processes()
                if time.monotonic() > deadline:
                    missing = sorted(set(range(self.num_clients)) - set(self.hello))
                    raise RunFailed(
                        f"split: clients {missing} did not join within split.timeout_s = "
                        f"{self.timeout_s:g} s (start them with python -m client.split_node --server "
                        f"HOST:{self.port} --client-id I)"
                    )
                self.joined.wait(timeout=POLL_S)
        return [
            ProxyClient(i, self.hello[i]["num_examples"], self.hello[i]["address"], self)
            for i in range(self.num_clients)
        ]

    def bind_ledger(self, domain) -> None:
        for client_id in range(self.num_clients):
            self._ask(client_id, {"kind": "bind", "domain": domain.to_dict()})

    def data_upload(self, client_id: int) -> SignedUpload:
        header, _ = self._ask(client_id, {"kind": "upload"})
        return SignedUpload(str(header["recorded_digest"]), str(header["signature"]))

    def __call__(
        self, clients: list, global_adapter: AdapterState, round: int, extras: AdapterState, deadline=None
    ) -> list[ClientUpdate | Exception]:
        """flb.types.FitAll: the round's trunk set up, then the clients one at a time (until the deadline
        closes the round: flb.types.RoundDeadline)."""
        self.trunk.start_round(global_adapter, round)
        results = []
        for client in clients:
            if deadline and (late := deadline.late_before_turn(results, client.client_id)):
                results.append(late)
                continue
            results.append(self._fit(client.client_id, global_adapter, round, extras))
            if deadline:
                results[-1] = deadline.on_arrival(results[:-1], results[-1], client.client_id)
        return results

    def _fit(
        self, client_id: int, global_adapter: AdapterState, round: int, extras: AdapterState
    ) -> ClientUpdate | Exception:
        self.trunk.expect(client_id)
        try:
            header, sent = self._ask(
                client_id, {"kind": "fit", "round": round}, grouped(global_adapter=global_adapter, extras=extras)
            )
            return _update(header, sent)
        except Exception as exc:
            log.warning("round %d: client %d failed: %s", round, client_id, first_line(exc))
            return exc
        finally:
            self.trunk.expect(None)

    def round_traffic(self):
        return self.trunk.traffic

    def _ask(self, client_id: int, job: dict, tensors: dict | None = None) -> tuple[dict, dict]:
        """Give the client a job and wait for its result: SplitClientLost when it goes silent or its process ends,
        FLBError with its own one line when it reports a failure."""
        while not self.results[client_id].empty():
            self.results[client_id].get_nowait()  # a late answer to a job given up on
        self.jobs[client_id].put((job, tensors or {}))
        while True:
            try:
                header, sent = self.results[client_id].get(timeout=POLL_S)
                break
            except queue.Empty:
                self._check_processes([client_id])
                if time.monotonic() - self.last_seen.get(client_id, 0) > self.timeout_s:
                    raise SplitClientLost(
                        f"client {client_id} sent nothing for split.timeout_s = {self.timeout_s:g} s"
                    ) from None
        if header.get("error"):
            raise FLBError(f"client {client_id}: {header['error']}")
        return header, sent

    def _check_processes(self, client_ids=None) -> None:
        """SplitClientLost when the process of one of `client_ids` (default: every client) has ended."""
        for client_id, process in self.processes.items():
            if (client_ids is None or client_id in client_ids) and process.poll() is not None:
                raise SplitClientLost(
                    f"client {client_id}'s process ended with code {process.returncode} (see its node.log)"
                )

    # what the clients call

    def handle(self, frame: bytes) -> bytes:
        try:
            op, header = frame_header(frame)
            if op == "config":
                return encode_frame("config", {"config": json.dumps(self.config.to_dict()), "run_id": self.run_id})
            if op == "hello":
                return self._hello(header)
            client_id = self.tokens.get(header.get("token"))
            if client_id is None:
                raise SplitError("unknown token; say hello first")
            self.last_seen[client_id] = time.monotonic()
            if op in TRUNK_OPS:
                if client_id != self.trunk.expected:
                    raise SplitError(
                        f"client {client_id} sent {op!r} while the trunk serves client {self.trunk.expected}"
                    )
                return self.trunk.handle(frame)
            if op == "next":
                return self._next(client_id)
            if op == "result":
                _, header, tensors = decode_frame(frame)
                self.results[client_id].put((header, tensors))
                return encode_frame("ok")
            raise SplitError(f"unknown operation {op!r}")
        except (SplitError, ValueError, TypeError) as exc:
            return encode_frame("error", {"message": first_line(exc)})

    def _hello(self, header: dict) -> bytes:
        client_id, num_examples = header.get("client_id"), header.get("num_examples")
        with self.joined:
            if not isinstance(client_id, int) or not 0 <= client_id < self.num_clients:
                raise SplitError(f"client id {client_id!r} is not one of 0..{self.num_clients - 1}")
            if not isinstance(num_examples, int) or num_examples < 1:
                raise SplitError(f"client {client_id}: num_examples {num_examples!r} is not a whole number >= 1")
            if client_id in self.hello:
                raise SplitError(f"client {client_id} has already joined this run")
            token = secrets.token_hex(16)
            self.hello[client_id] = {"num_examples": num_examples, "address": header.get("address")}
            self.tokens[token], self.last_seen[client_id] = client_id, time.monotonic()
            self.joined.notify_all()
        log.info("split: client %d joined", client_id)
        return encode_frame("welcome", {"token": token})

    def _next(self, client_id: int) -> bytes:
        try:
            job, tensors = self.jobs[client_id].get(timeout=POLL_S)
        except queue.Empty:
            job, tensors = {"kind": "wait"}, {}
        return encode_frame("job", job, tensors)


def _update(header: dict, sent: dict) -> ClientUpdate:
    tensors, extras = ungrouped(sent, "tensors", "extras")
    try:
        return update_from_header(header, tensors, extras)
    except (KeyError, TypeError) as exc:
        raise SplitError(f"an update without its fields ({type(exc).__name__}: {exc})") from None
