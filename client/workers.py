"""execution.mode: processes: the sampled clients train in a pool of worker processes, each with its own copy of the
model, so that several CPU cores or several GPUs (execution.devices, execution.workers on each) work at once.

The main process holds the pool and one proxy per client (flb.types.ProxyClient: what the client declared, its last
epsilon report); the round coordinator drives them unchanged through `WorkerPool.fit_all`. A worker builds a client
the first time it is given one and keeps it. The client's secrets live in its private directory (RUN_DIR/private/client_<i>/),
which the worker running it reads and writes exactly as an in-process client does, and SFTClient.fit starts every
round from the state saved there, so any worker may run any client and a round's clients spread over all workers.
Only the first construction of a client creates its secrets and signs its data record, so at start each client is
built once, by one worker (round robin), before any other may build it.

A round queues one job per client and starts as many at once on each device as its flb.scheduler.Admission allows:
one until a job's peak memory has been measured (in the worker, around the fit), then as many as the budget holds.
A job that ran out of memory (an error saying so, or its worker killed by the kernel's OOM killer) while other jobs
ran beside it is queued again with less concurrency; a worker that died is restarted. A client whose job fails gets
the Exception as its result, as server.coordinator.fit_in_turn returns it, and server.max_client_failures decides
what it costs. The main process waits on the workers' pipes and process sentinels together, so a worker that dies
never leaves it waiting. Workers log through their pipe into the run's log; their progress bars are off.

What crosses a pipe: a JSON header, then tensors as safetensors bytes; log records as JSON text. The main process
unpickles nothing a worker sends. The one pickle is multiprocessing's own, from parent to child: the functions a
worker starts with (how to load the model and build a client, bound to the run's config), which a spawned child
receives from the process that started it.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from flb.errors import FLBError, RunFailed, first_line
from flb.scheduler import Admission, WorkerDied, cpu_threads, is_out_of_memory
from flb.types import AdapterState, ClientUpdate, ProxyClient, SignedUpload, update_from_header, update_header

log = logging.getLogger(__name__)
WAIT_S = 5.0  # the longest one wait for pipes and sentinels lasts before the loop looks again
STOP_S = 30.0  # how long a worker told to stop may take before it is terminated


class WorkerError(FLBError):
    """What a job raised in its worker, in one line; the worker logged the traceback into the run's log."""


@dataclass
class _Job:
    position: int  # in the list of results
    op: str  # build | bind | upload | budget | dtypes | fit
    client_id: int | None = None
    header: dict = field(default_factory=dict)
    blobs: dict = field(default_factory=dict)
    worker: int | None = None  # the worker that must run it; None: any
    admitted: bool = False  # counts against its device's Admission (fit)
    crowded: bool = False  # other admitted jobs ran on its device while it ran
    device: str = ""


@dataclass
class _Worker:
    index: int
    device: str
    process: object
    channel: "_Channel"
    ready: bool = False
    lost: str | None = None  # why it could not start; it is not started again
    job: _Job | None = None
    built: set = field(default_factory=set)  # ids of the clients it has built
    pid: int | None = None


class WorkerPool:
    """`workers_per_device` worker processes on each of `devices`. `load_model(device)` -> (tokenizer, model) and
    `build_client(device, client_id, shard, model, tokenizer)` -> a flb.types.Client run in the workers; both must be
    picklable (module-level functions, or functools.partial of them), `device` being the worker's own name for its
    device (cuda:N is that worker's only visible GPU, so it says cuda)."""

    def __init__(self, *, load_model: Callable, build_client: Callable, shards: list[list[dict]], devices: list[str],
                 workers_per_device: int, memory_budget_mb: float | None = None):
        import multiprocessing

        if not devices or workers_per_device < 1:
            raise ValueError(f"WorkerPool: devices {devices!r}, workers_per_device {workers_per_device}: give at "
                             "least one device and one worker")
        self.load_model, self.build_client, self.shards = load_model, build_client, shards
        self.devices = list(dict.fromkeys(devices))  # a device listed twice is one memory budget
        self.workers_per_device, self.memory_budget_mb = workers_per_device, memory_budget_mb
        self.context = multiprocessing.get_context("spawn")  # fork would copy a process that may hold CUDA
        self.threads = cpu_threads(len(self.devices) * workers_per_device)
        self.domain: dict | None = None  # the ledger's signing domain, once bound
        self.workers: list[_Worker] = []
        self.admissions: dict[str, Admission] = {}
        self.clients: list[ProxyClient] = []

    def __enter__(self) -> "WorkerPool":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "WorkerPool":
        """Start the workers, build every client once (each in one worker) and set each device's memory budget;
        RunFailed (every worker stopped) when a worker cannot start or a client cannot be built."""
        try:
            self.workers = [self._spawn(i, device) for i, device in
                            enumerate(d for d in self.devices for _ in range(self.workers_per_device))]
            while not all(w.ready for w in self.workers) and not any(w.lost for w in self.workers):
                self._step(deque(), [])
            for worker in self.workers:
                if worker.lost:
                    raise RunFailed(f"execution: worker {worker.index} on {worker.device} could not start: {worker.lost}")
            built = self._must(self._run([_Job(i, "build", client_id=i, worker=i % len(self.workers))
                                          for i in range(len(self.shards))]), lambda i: f"build client {i}")
            self.clients = [ProxyClient(i, reply["num_examples"], reply["address"], self, reply["privacy"])
                            for i, (reply, _) in enumerate(built)]
            self._set_budgets()
        except BaseException:
            self.close()
            raise
        return self

    def _set_budgets(self) -> None:
        first = {device: next(w.index for w in self.workers if w.device == device) for device in self.devices}
        replies = self._must(self._run([_Job(i, "budget", header={"memory_budget_mb": self.memory_budget_mb},
                                             worker=first[device]) for i, device in enumerate(self.devices)]),
                             lambda i: f"measure the free memory of {self.devices[i]}")
        for device, (reply, _) in zip(self.devices, replies):
            self.admissions[device] = Admission(budget_bytes=reply["budget_bytes"], limit=self.workers_per_device,
                                                device=device)
            log.info("execution: %d worker processes on %s, %d torch threads each; budget %.0f MB (%s) for the "
                     "clients running at once", self.workers_per_device, device, self.threads,
                     reply["budget_bytes"] / 1e6, "execution.memory_budget_mb" if self.memory_budget_mb else
                     "90 % of what is free")

    def _must(self, outcomes: list, what: Callable[[int], str]) -> list:
        """`outcomes` of `_run`, or RunFailed saying what(position) the first failed one could not do, and why."""
        for position, outcome in enumerate(outcomes):
            if isinstance(outcome, Exception):
                raise RunFailed(f"execution: the workers could not {what(position)}: {first_line(outcome)}")
        return outcomes

    def close(self) -> None:
        """Tell every idle worker to stop and terminate busy ones (the run no longer wants their results); one that has
        not stopped within STOP_S is terminated, then killed."""
        for worker in self.workers:
            if worker.job is not None:
                worker.process.terminate()
                continue
            try:
                worker.channel.send({"op": "stop"})
            except OSError:
                pass
        for worker in self.workers:
            worker.process.join(STOP_S)
            if worker.process.is_alive():
                log.warning("execution: worker %d did not stop within %gs; terminating it", worker.index, STOP_S)
                worker.process.terminate()
                worker.process.join(5)
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join()
            worker.channel.close()
        self.workers = []

    def align_adapter(self, model) -> None:
        """Give the main process's adapter the workers' dtypes: building a client on a quantized base makes trl cast
        the LoRA weights to bfloat16, and this process, which builds none, reads the initial global adapter."""
        import torch

        from flb.model.load import adapter_parameters

        ((reply, _),) = self._must(self._run([_Job(0, "dtypes")]), lambda _: "read the adapter's dtypes")
        for name, parameter in adapter_parameters(model).items():
            dtype = getattr(torch, reply["dtypes"][name])
            if parameter.dtype != dtype:
                parameter.data = parameter.data.to(dtype)

    def bind_ledger(self, domain) -> None:
        if domain.to_dict() == self.domain:
            return
        self.domain = domain.to_dict()
        live = [w.index for w in self.workers if not w.lost]
        self._must(self._run([_Job(position, "bind", header={"domain": self.domain}, worker=index)
                              for position, index in enumerate(live)]),
                   lambda i: f"bind worker {live[i]} to the ledger")

    def data_upload(self, client_id: int) -> SignedUpload:
        (outcome,) = self._run([_Job(0, "upload", client_id=client_id)])
        if isinstance(outcome, Exception):
            raise outcome
        reply, _ = outcome
        return SignedUpload(reply["recorded_digest"], reply["signature"])

    def fit_all(self, clients: list[ProxyClient], global_adapter: AdapterState, round: int,
                extras: AdapterState) -> list[ClientUpdate | Exception]:
        """One job per client, as many at once as each device's Admission allows; a ClientUpdate or the Exception
        saying why there is none, per client, in order."""
        blobs = {"global": _tensor_bytes(global_adapter), "extras": _tensor_bytes(extras or {})}
        jobs = [_Job(i, "fit", client_id=c.client_id, header={"round": round}, blobs=blobs, admitted=True)
                for i, c in enumerate(clients)]
        results = []
        for client, outcome in zip(clients, self._run(jobs)):
            if not isinstance(outcome, Exception):
                outcome = _read_update(*outcome)
                client.spent = outcome.privacy
            results.append(outcome)
        return results

    # the main process's loop: hand jobs to idle workers, read what comes back, replace workers that die

    def _run(self, jobs: list[_Job]) -> list:
        """Run `jobs` on the workers; per job, (reply header, blobs) or the Exception it ended with."""
        pending, results = deque(jobs), [None] * len(jobs)
        while pending or any(w.job for w in self.workers):
            if not self._step(pending, results):
                break
        for job in pending:
            results[job.position] = WorkerDied(f"execution: no worker is left to {job.op} (see run.log for why)", None)
        return results

    def _step(self, pending: deque, results: list) -> bool:
        """Hand out what can start, then wait (at most WAIT_S) for messages and deaths and take them in; False when
        no worker is left."""
        from multiprocessing.connection import wait

        self._dispatch(pending, results)
        waiting = {}
        for worker in self.workers:
            if not worker.lost:
                waiting[worker.channel.conn] = waiting[worker.process.sentinel] = worker
        for worker in {waiting[ready].index: waiting[ready] for ready in wait(list(waiting), WAIT_S)}.values():
            self._receive(worker, pending, results)
        return bool(waiting)

    def _dispatch(self, pending: deque, results: list) -> None:
        for job in list(pending):
            if job.worker is not None and self.workers[job.worker].lost:
                pending.remove(job)
                results[job.position] = WorkerDied(f"worker {job.worker} could not start: "
                                                   f"{self.workers[job.worker].lost}", None)
                continue
            worker = self._worker_for(job)
            if worker is not None:
                pending.remove(job)
                self._start(worker, job)

    def _worker_for(self, job: _Job) -> _Worker | None:
        """An idle worker for `job`: the one it must run on, else one on a device that admits another job, one that
        has built its client first."""
        idle = [w for w in self.workers if w.ready and w.job is None and job.worker in (None, w.index)]
        if job.admitted:
            idle = [w for w in idle if len(self._running(w.device)) < self.admissions[w.device].concurrency]
        return next((w for w in idle if job.client_id in w.built), idle[0] if idle else None)

    def _running(self, device: str) -> list[_Job]:
        return [w.job for w in self.workers if w.job is not None and w.job.admitted and w.device == device]

    def _start(self, worker: _Worker, job: _Job) -> None:
        header = {**job.header, "op": job.op, "client_id": job.client_id}
        if job.client_id is not None and job.client_id not in worker.built:
            header["shard"] = self.shards[job.client_id]
        if job.admitted:
            running = self._running(worker.device)
            for other in running:
                other.crowded = True
            job.crowded, job.device = bool(running), worker.device
        worker.job = job
        try:
            worker.channel.send(header, job.blobs)
        except OSError:
            pass  # it died: its sentinel says so next

    def _receive(self, worker: _Worker, pending: deque, results: list) -> None:
        """Everything `worker` has sent; then, if its process has ended, its death."""
        try:
            while worker.channel.conn.poll():
                header, blobs = worker.channel.receive()
                self._handle(worker, header, blobs, pending, results)
        except (EOFError, OSError):  # its end of the pipe closed: it is exiting, or must
            worker.process.join(STOP_S)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        if not worker.process.is_alive():
            self._died(worker, pending, results)

    def _handle(self, worker: _Worker, header: dict, blobs: dict, pending: deque, results: list) -> None:
        op = header.pop("op")
        if op == "log":
            logging.getLogger(header["name"]).log(header["level"], "worker %d: %s", worker.index, header["message"])
        elif op == "ready":
            worker.ready, worker.pid = True, header["pid"]
        elif op == "failed":
            worker.lost = header["error"]
        else:
            job, worker.job = worker.job, None
            if op == "done":
                if job.client_id is not None:
                    worker.built.add(job.client_id)
                if job.admitted:
                    self.admissions[job.device].measured(header["peak_bytes"])
                results[job.position] = header, blobs
            else:
                self._failed(job, WorkerError(f"{header['error']} (client {job.client_id} on worker {worker.index}; "
                                              "traceback in run.log)"), header["out_of_memory"], pending, results)

    def _died(self, worker: _Worker, pending: deque, results: list) -> None:
        """A worker's process ended: a worker that never got ready is lost; one that did is started again, and the
        job it had ends as WorkerDied (or runs again with less concurrency, when it ran out of memory in a crowd)."""
        worker.channel.close()
        if not worker.ready:
            worker.lost = worker.lost or _exit_reason(worker.process.exitcode)
            log.error("execution: worker %d on %s could not start: %s", worker.index, worker.device, worker.lost)
            return
        job = worker.job
        doing = f" while it ran {job.op} for client {job.client_id}" if job else ""
        died = WorkerDied(f"worker {worker.index} (pid {worker.pid}, {worker.device}) died{doing}: "
                          f"{_exit_reason(worker.process.exitcode)}", worker.process.exitcode)
        log.warning("execution: %s; starting it again", died)
        self.workers[worker.index] = self._spawn(worker.index, worker.device)
        if job is not None:
            self._failed(job, died, is_out_of_memory(died), pending, results)

    def _failed(self, job: _Job, error: Exception, out_of_memory: bool, pending: deque, results: list) -> None:
        if job.admitted and out_of_memory and job.crowded:
            self.admissions[job.device].out_of_memory()
            job.crowded = False
            pending.appendleft(job)
        else:
            results[job.position] = error

    def _spawn(self, index: int, device: str) -> _Worker:
        parent, child = self.context.Pipe()
        process = self.context.Process(target=_serve, name=f"flb-worker-{index}",
                                       args=(child, device, self.threads, self.load_model, self.build_client,
                                             self.domain))
        process.start()
        child.close()
        return _Worker(index, device, process, _Channel(parent))


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (the kernel's out-of-memory killer sends it; see dmesg)" if -exitcode == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with code {exitcode}"


class _Channel:
    """Messages over one end of a pipe: a JSON header, then each blob (bytes) it names. Sends hold a lock, so a
    worker's log record never lands inside a reply."""

    def __init__(self, conn):
        self.conn, self.lock = conn, threading.Lock()

    def send(self, header: dict, blobs: dict | None = None) -> None:
        blobs = blobs or {}
        with self.lock:
            self.conn.send_bytes(json.dumps({**header, "blobs": list(blobs)}).encode())
            for blob in blobs.values():
                self.conn.send_bytes(blob)

    def receive(self) -> tuple[dict, dict]:
        header = json.loads(self.conn.recv_bytes())
        return header, {name: self.conn.recv_bytes() for name in header.pop("blobs")}

    def close(self) -> None:
        self.conn.close()


def _tensor_bytes(state: AdapterState) -> bytes:
    from safetensors.torch import save

    return save({name: tensor.detach().to("cpu").contiguous() for name, tensor in state.items()})


def _tensors(data: bytes) -> AdapterState:
    from safetensors.torch import load

    return load(data)


def _update_reply(update: ClientUpdate, peak_bytes: int) -> tuple[dict, dict]:
    header = {"op": "done", "peak_bytes": peak_bytes, **update_header(update)}
    return header, {"tensors": _tensor_bytes(update.tensors), "extras": _tensor_bytes(update.extras)}


def _read_update(header: dict, blobs: dict) -> ClientUpdate:
    return update_from_header(header, _tensors(blobs["tensors"]), _tensors(blobs["extras"]))


# the worker process


def _serve(conn, device: str, threads: int, load_model: Callable, build_client: Callable, domain: dict | None) -> None:
    """A worker: load the model, say it is ready, then answer the main process's requests until it says stop or its
    end of the pipe closes."""
    os.environ["TQDM_DISABLE"] = "1"  # before anything here imports tqdm: no progress bars from workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's; it stops the workers
    channel = _Channel(conn)
    root = logging.getLogger()
    root.handlers[:] = [_PipeHandler(channel)]
    root.setLevel(logging.WARNING)
    try:
        worker = _Served(channel, _visible(device), threads, load_model, build_client, domain)
    except Exception as exc:
        log.exception("execution: loading the model on %s failed", device)
        channel.send({"op": "failed", "error": f"{type(exc).__name__}: {first_line(exc)}"})
        return
    channel.send({"op": "ready", "pid": os.getpid()})
    while True:
        try:
            header, blobs = channel.receive()
        except (EOFError, OSError):
            return
        if header["op"] == "stop":
            return
        channel.send(*worker.answer(header, blobs))


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


class _Served:
    """A worker's model and the clients it has built."""

    def __init__(self, channel: _Channel, device: str, threads: int, load_model: Callable, build_client: Callable,
                 domain: dict | None):
        import torch

        torch.set_num_threads(threads)
        self.device, self.build_client, self.domain = device, build_client, domain
        self.tokenizer, self.model = load_model(device)
        self.clients: dict[int, object] = {}
        self.frozen = False  # gc.freeze() done (at its first fit)

    def answer(self, header: dict, blobs: dict) -> tuple[dict, dict]:
        op, client_id = header["op"], header.get("client_id")
        try:
            return getattr(self, f"_{op}")(header, blobs)
        except Exception as exc:
            out_of_memory = is_out_of_memory(exc)
            if out_of_memory:
                log.warning("%s for client %s ran out of memory: %s", op, client_id, first_line(exc))
                self._release()
            else:
                log.exception("round %s: client %s failed (%s)", header.get("round", 0), client_id, op)
            return {"op": "error", "error": f"{type(exc).__name__}: {first_line(exc)}",
                    "out_of_memory": out_of_memory}, {}

    def _client(self, header: dict):
        client_id = header["client_id"]
        if client_id not in self.clients:
            client = self.build_client(self.device, client_id, header["shard"], self.model, self.tokenizer)
            if self.domain is not None:
                client.bind_ledger(_domain(self.domain))
            self.clients[client_id] = client
        return self.clients[client_id]

    def _build(self, header: dict, blobs: dict) -> tuple[dict, dict]:
        client = self._client(header)
        return {"op": "done", "num_examples": client.num_examples, "address": client.address,
                "privacy": client.privacy_spent()}, {}

    def _bind(self, header: dict, blobs: dict) -> tuple[dict, dict]:
        self.domain = header["domain"]
        for client in self.clients.values():
            client.bind_ledger(_domain(self.domain))
        return {"op": "done"}, {}

    def _upload(self, header: dict, blobs: dict) -> tuple[dict, dict]:
        upload = self._client(header).data_upload()
        return {"op": "done", "recorded_digest": upload.recorded_digest, "signature": upload.signature}, {}

    def _budget(self, header: dict, blobs: dict) -> tuple[dict, dict]:
        from flb.scheduler import budget_bytes

        return {"op": "done", "budget_bytes": budget_bytes(self.device, header["memory_budget_mb"])}, {}

    def _dtypes(self, header: dict, blobs: dict) -> tuple[dict, dict]:
        from flb.model.load import get_adapter_state

        return {"op": "done", "dtypes": {name: str(tensor.dtype).removeprefix("torch.")
                                         for name, tensor in get_adapter_state(self.model).items()}}, {}

    def _fit(self, header: dict, blobs: dict) -> tuple[dict, dict]:
        import gc

        from flb.scheduler import peak_memory

        client = self._client(header)
        if not self.frozen:  # its clients are built before round 1: the collector skips them from now on, as the
            gc.freeze()      # main process does (main_simple_fl.coordinate)
            self.frozen = True
        with peak_memory(self.device) as peak:
            update = client.fit(_tensors(blobs["global"]), header["round"], _tensors(blobs["extras"]))
        return _update_reply(update, peak.bytes)

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

    def __init__(self, channel: _Channel):
        super().__init__()
        self.channel = channel
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.channel.send({"op": "log", "name": record.name, "level": record.levelno,
                               "message": self.format(record)})
        except Exception:
            self.handleError(record)
