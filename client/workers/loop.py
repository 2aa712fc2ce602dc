"""What runs in a worker process: it loads the model once, builds a client the first time it is given one and keeps
it, and answers the main process's jobs (client.workers.pool) until told to stop.

A client's secrets live in its private directory (RUN_DIR/private/client_<i>/), which the worker running it reads
and writes exactly as an in-process client does, and SFTClient.fit starts every round from the state saved there,
so any worker may run any client. A worker's log records go through its pipe into the run's log; its progress bars
are off.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

from client.workers.channel import Channel, update_reply
from flb.errors import first_line
from flb.frames import ungrouped
from flb.scheduler import is_out_of_memory

log = logging.getLogger("client.workers")


def serve(conn, device: str, threads: int, load_model: Callable, build_clients: Callable, domain: dict | None) -> None:
    """A worker: load the model, say it is ready, then answer the main process's jobs until it says stop or its end of
    the pipe closes."""
    os.environ["TQDM_DISABLE"] = "1"  # before anything here imports tqdm: no progress bars from workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's; it stops the workers
    channel = Channel(conn)
    root = logging.getLogger()
    root.handlers[:] = [_PipeHandler(channel)]
    root.setLevel(logging.WARNING)
    try:
        worker = _Served(_visible(device), threads, load_model, build_clients, domain)
    except Exception as exc:
        log.exception("execution: loading the model on %s failed", device)
        channel.send("failed", {"error": f"{type(exc).__name__}: {first_line(exc)}"})
        return
    channel.send("ready", {"pid": os.getpid()})
    while True:
        try:
            op, header, tensors = channel.receive()
        except (EOFError, OSError):
            return
        if op == "stop":
            return
        channel.send(*worker.answer(op, header, tensors))


def _visible(device: str) -> str:
    """Make cuda:N this process's only visible GPU (before CUDA starts here) and return the name it has now."""
    kind, _, index = device.partition(":")
    if kind != "cuda" or not index:
        return device
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        listed = visible.split(",")
        if int(index) >= len(listed):
            raise ValueError(f"execution.devices: {device} is not among CUDA_VISIBLE_DEVICES={visible}")
        index = listed[int(index)]
    os.environ["CUDA_VISIBLE_DEVICES"] = index
    return "cuda"


Reply = tuple[str, dict, dict]  # a frame's op, header and tensors


class _Served:
    """A worker's model and the clients it has built; one method per job, each returning its reply."""

    def __init__(self, device: str, threads: int, load_model: Callable, build_clients: Callable, domain: dict | None):
        import torch

        torch.set_num_threads(threads)
        self.device, self.build_clients, self.domain = device, build_clients, domain
        self.tokenizer, self.model = load_model(device)
        self.clients: dict[int, object] = {}
        self.frozen = False  # gc.freeze() done (at its first fit)

    def answer(self, op: str, header: dict, tensors: dict) -> Reply:
        client_id = header.get("client_id")
        try:
            return getattr(self, f"_{op}")(header, tensors)
        except Exception as exc:
            out_of_memory = is_out_of_memory(exc)
            if out_of_memory:
                log.warning("%s for client %s ran out of memory: %s", op, client_id, first_line(exc))
                self._release()
            else:
                log.exception("round %s: client %s failed (%s)", header.get("round", 0), client_id, op)
            return "error", {"error": f"{type(exc).__name__}: {first_line(exc)}", "out_of_memory": out_of_memory}, {}

    def _client(self, header: dict):
        """The job's client, built here first from the shard the job carries if this worker has not built it."""
        client_id = header["client_id"]
        if client_id not in self.clients:
            self._add({client_id: header["shard"]})
        return self.clients[client_id]

    def _add(self, shards: dict[int, list[dict]]) -> None:
        for client_id, client in self.build_clients(self.device, shards, self.model, self.tokenizer).items():
            if self.domain is not None:
                client.bind_ledger(_domain(self.domain))
            self.clients[client_id] = client

    def _build(self, header: dict, tensors: dict) -> Reply:
        """Build this worker's share of the clients (client id -> shard) at once; what each declares."""
        shards = {int(client_id): shard for client_id, shard in header["shards"].items()}
        self._add(shards)
        declared = [
            [i, self.clients[i].num_examples, self.clients[i].address, self.clients[i].privacy_spent()] for i in shards
        ]
        return "done", {"clients": declared}, {}

    def _bind(self, header: dict, tensors: dict) -> Reply:
        self.domain = header["domain"]
        for client in self.clients.values():
            client.bind_ledger(_domain(self.domain))
        return "done", {}, {}

    def _upload(self, header: dict, tensors: dict) -> Reply:
        upload = self._client(header).data_upload()
        return "done", {"recorded_digest": upload.recorded_digest, "signature": upload.signature}, {}

    def _budget(self, header: dict, tensors: dict) -> Reply:
        from flb.scheduler import budget_bytes

        return "done", {"budget_bytes": budget_bytes(self.device, header["memory_budget_mb"])}, {}

    def _dtypes(self, header: dict, tensors: dict) -> Reply:
        from flb.model.load import get_adapter_state

        return (
            "done",
            {
                "dtypes": {
                    name: str(tensor.dtype).removeprefix("torch.")
                    for name, tensor in get_adapter_state(self.model).items()
                }
            },
            {},
        )

    def _fit(self, header: dict, tensors: dict) -> Reply:
        import gc

        from flb.scheduler import peak_memory

        client = self._client(header)
        if not self.frozen:  # its clients are built before round 1: the collector skips them from now on, as the
            gc.freeze()  # main process does (assembly.run.coordinate)
            self.frozen = True
        global_adapter, extras = ungrouped(tensors, "global_adapter", "extras")
        with peak_memory(self.device) as peak:
            update = client.fit(client.received(global_adapter), header["round"], extras)
        return update_reply(update, peak.bytes)

    def _release(self) -> None:
        """After an out-of-memory error: hand what the failed work held back to the device."""
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()


def _domain(data: dict):
    from flb.audit.attestation import SigningDomain

    return SigningDomain.from_dict(data)


class _PipeHandler(logging.Handler):
    """A worker's log records, as text, to the main process, which logs them under the same logger name."""

    def __init__(self, channel: Channel):
        super().__init__()
        self.channel = channel
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.channel.send("log", {"name": record.name, "level": record.levelno, "message": self.format(record)})
        except Exception:
            self.handleError(record)
