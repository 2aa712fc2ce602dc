"""The main process's side of the worker pool: it holds the workers and one proxy per client (flb.types.ProxyClient:
what the client declared, its last epsilon report), which the round coordinator drives unchanged through
`WorkerPool.fit_all`.

Every client is built once, by one worker (round robin, each worker's share in one job, so their shards are tokenized
in one pass), before any other may build it: only that first construction creates its secrets and signs its data
record. From then on any worker may run any client (its secrets are in its private directory, client.workers.loop),
so a round's clients spread over all workers.

A round queues one job per client and starts as many at once on each device as its flb.scheduler.Admission allows:
one until a job's peak memory has been measured (in the worker, around the fit), then as many as the budget holds.
A job that ran out of memory (an error saying so, or its worker killed by the kernel's OOM killer) while other jobs
ran beside it is queued again with less concurrency; a worker that died is restarted. A client whose job fails gets
the Exception as its result, as server.coordinator.fit_in_turn returns it, and server.max_client_failures decides
what it costs. The main process waits on the workers' pipes and process sentinels together, so a worker that dies
never leaves it waiting. Workers log through their pipe into the run's log.
"""

from __future__ import annotations

import logging
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from client.workers.channel import Channel, read_update
from client.workers.loop import serve
from flb.adapters.compression import encode
from flb.errors import ClientLate, FLBError, RunFailed, first_line
from flb.frames import grouped
from flb.scheduler import Admission, WorkerDied, cpu_threads, is_out_of_memory
from flb.types import AdapterState, ClientUpdate, ProxyClient, RoundDeadline, SignedUpload

log = logging.getLogger("client.workers")
WAIT_S = 5.0  # the longest one wait for pipes and sentinels lasts before the loop looks again
MIN_WAIT_S = 0.05  # the shortest, once a round's deadline is near
STOP_S = 30.0  # how long a worker told to stop may take before it is terminated


class WorkerError(FLBError):
    """What a job raised in its worker, in one line; the worker logged the traceback into the run's log."""


@dataclass
class _Job:
    position: int  # in the list of results
    op: str  # build | bind | upload | budget | dtypes | fit
    client_id: int | None = None
    header: dict = field(default_factory=dict)
    tensors: dict = field(default_factory=dict)
    worker: int | None = None  # the worker that must run it; None: any
    admitted: bool = False  # counts against its device's Admission (fit)
    crowded: bool = False  # other admitted jobs ran on its device while it ran
    device: str = ""


@dataclass
class _Worker:
    index: int
    device: str
    process: object
    channel: Channel
    ready: bool = False
    lost: str | None = None  # why it could not start; it is not started again
    job: _Job | None = None
    built: set = field(default_factory=set)  # ids of the clients it has built
    pid: int | None = None


class WorkerPool:
    """`workers_per_device` worker processes on each of `devices`. `load_model(device)` -> (tokenizer, model) and
    `build_clients(device, shards, model, tokenizer)` -> {client id: flb.types.Client} for `shards` (client id ->
    records), run in the workers; both must be
    picklable (module-level functions, or functools.partial of them), `device` being the worker's own name for its
    device (cuda:N is that worker's only visible GPU, so it says cuda)."""

    def __init__(
        self,
        *,
        load_model: Callable,
        build_clients: Callable,
        shards: list[list[dict]],
        devices: list[str],
        workers_per_device: int,
        memory_budget_mb: float | None = None,
        broadcast_compression: str = "none",
    ):
        import multiprocessing

        if not devices or workers_per_device < 1:
            raise ValueError(
                f"WorkerPool: devices {devices!r}, workers_per_device {workers_per_device}: give at "
                "least one device and one worker"
            )
        self.load_model, self.build_clients, self.shards = load_model, build_clients, shards
        self.devices = list(dict.fromkeys(devices))  # a device listed twice is one memory budget
        self.workers_per_device, self.memory_budget_mb = workers_per_device, memory_budget_mb
        self.broadcast_compression = broadcast_compression  # how the global adapter crosses to the workers
        self.context = multiprocessing.get_context("spawn")  # fork would copy a process that may hold CUDA
        self.threads = cpu_threads(len(self.devices) * workers_per_device)
        self.domain: dict | None = None  # the ledger's signing domain, once bound
        self.workers: list[_Worker] = []
        self.admissions: dict[str, Admission] = {}
        self.clients: list[ProxyClient] = []
        # strategy fedbuff's jobs (flb.types.Jobs): submitted one by one, awaited one by one, by client id
        self.submitted: deque = deque()
        self.done: dict[int, object] = {}

    def __enter__(self) -> WorkerPool:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> WorkerPool:
        """Start the workers, build every client once (each in one worker) and set each device's memory budget;
        RunFailed (every worker stopped) when a worker cannot start or a client cannot be built."""
        try:
            self.workers = [
                self._spawn(i, device)
                for i, device in enumerate(d for d in self.devices for _ in range(self.workers_per_device))
            ]
            while not all(w.ready for w in self.workers) and not any(w.lost for w in self.workers):
                self._step(deque(), [])
            for worker in self.workers:
                if worker.lost:
                    raise RunFailed(
                        f"execution: worker {worker.index} on {worker.device} could not start: {worker.lost}"
                    )
            count = min(len(self.workers), len(self.shards))  # a worker with no share builds nothing
            shares = [{i: self.shards[i] for i in range(w, len(self.shards), count)} for w in range(count)]
            built = self._must(
                self._run([_Job(w, "build", header={"shards": share}, worker=w) for w, share in enumerate(shares)]),
                lambda w: f"build the clients of worker {w}",
            )
            declared = {client_id: rest for reply, _ in built for client_id, *rest in reply["clients"]}
            self.clients = [
                ProxyClient(i, num_examples, address, self, privacy)
                for i, (num_examples, address, privacy) in sorted(declared.items())
            ]
            self._set_budgets()
        except BaseException:
            self.close()
            raise
        return self

    def _set_budgets(self) -> None:
        first = {device: next(w.index for w in self.workers if w.device == device) for device in self.devices}
        replies = self._must(
            self._run(
                [
                    _Job(i, "budget", header={"memory_budget_mb": self.memory_budget_mb}, worker=first[device])
                    for i, device in enumerate(self.devices)
                ]
            ),
            lambda i: f"measure the free memory of {self.devices[i]}",
        )
        for device, (reply, _) in zip(self.devices, replies):
            self.admissions[device] = Admission(
                budget_bytes=reply["budget_bytes"], limit=self.workers_per_device, device=device
            )
            log.info(
                "execution: %d worker processes on %s, %d torch threads each; budget %.0f MB (%s) for the "
                "clients running at once",
                self.workers_per_device,
                device,
                self.threads,
                reply["budget_bytes"] / 1e6,
                "execution.memory_budget_mb" if self.memory_budget_mb else "90 % of what is free",
            )

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
                worker.channel.send("stop")
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
        self._must(
            self._run(
                [
                    _Job(position, "bind", header={"domain": self.domain}, worker=index)
                    for position, index in enumerate(live)
                ]
            ),
            lambda i: f"bind worker {live[i]} to the ledger",
        )

    def data_upload(self, client_id: int) -> SignedUpload:
        (outcome,) = self._run([_Job(0, "upload", client_id=client_id)])
        if isinstance(outcome, Exception):
            raise outcome
        reply, _ = outcome
        return SignedUpload(reply["recorded_digest"], reply["signature"])

    def fit_all(
        self,
        clients: list[ProxyClient],
        global_adapter: AdapterState,
        round: int,
        extras: AdapterState,
        deadline: RoundDeadline | None = None,
    ) -> list[ClientUpdate | Exception]:
        """One job per client, as many at once as each device's Admission allows, until the `deadline` closes the
        round; a ClientUpdate or the Exception saying why there is none, per client, in order."""
        tensors = grouped(global_adapter=encode(self.broadcast_compression, global_adapter), extras=extras or {})
        jobs = [_fit_job(i, c.client_id, round, tensors) for i, c in enumerate(clients)]
        return [_answer(client, outcome) for client, outcome in zip(clients, self._run(jobs, deadline))]

    def submit(self, client: ProxyClient, global_adapter: AdapterState, round: int) -> None:
        """Start `client` training from `global_adapter` for `round` as soon as a worker and its device admit it."""
        tensors = grouped(global_adapter=encode(self.broadcast_compression, global_adapter), extras={})
        self.submitted.append(_fit_job(client.client_id, client.client_id, round, tensors))
        self._dispatch(self.submitted, self.done)

    def result(self, client: ProxyClient) -> ClientUpdate | Exception:
        """The update of `client`'s submitted job, waiting for it while the other jobs go on."""
        while client.client_id not in self.done:
            if not self._step(self.submitted, self.done):
                return WorkerDied("execution: no worker is left to fit (see run.log for why)", None)
        return _answer(client, self.done.pop(client.client_id))

    # the main process's loop: hand jobs to idle workers, read what comes back, replace workers that die

    def _run(self, jobs: list[_Job], deadline: RoundDeadline | None = None) -> list:
        """Run `jobs` on the workers; per job, (reply header, tensors) or the Exception it ended with."""
        pending, results = deque(jobs), [None] * len(jobs)
        while pending or any(w.job for w in self.workers):
            if deadline and deadline.closed_with(sum(isinstance(r, tuple) for r in results)):
                self._close_round(pending, results)
                break
            if not self._step(pending, results, deadline.seconds_left() if deadline else WAIT_S):
                break
        for job in pending:
            results[job.position] = WorkerDied(f"execution: no worker is left to {job.op} (see run.log for why)", None)
        return results

    def _step(self, pending: deque, results: list, wait_s: float = WAIT_S) -> bool:
        """Hand out what can start, then wait (at most `wait_s`, and WAIT_S) for messages and deaths and take them in;
        False when no worker is left."""
        from multiprocessing.connection import wait

        self._dispatch(pending, results)
        waiting = {}
        for worker in self.workers:
            if not worker.lost:
                waiting[worker.channel.conn] = waiting[worker.process.sentinel] = worker
        timeout = min(WAIT_S, max(wait_s, MIN_WAIT_S))
        for worker in {waiting[ready].index: waiting[ready] for ready in wait(list(waiting), timeout)}.values():
            self._receive(worker, pending, results)
        return bool(waiting)

    def _close_round(self, pending: deque, results: list) -> None:
        """The round's deadline has passed with enough updates in: the jobs not started are late, and so are those
        still running, whose workers are stopped and started again (a client's round that does not finish leaves
        its private state as it was before the round)."""
        for job in pending:
            results[job.position] = ClientLate.before_turn(job.client_id)
        pending.clear()
        for worker in list(self.workers):
            if worker.job is not None:
                results[worker.job.position] = ClientLate.still_training(worker.job.client_id)
                worker.process.kill()
                worker.process.join()
                worker.channel.close()
                log.info("execution: worker %d stopped at the round's deadline; starting it again", worker.index)
                self.workers[worker.index] = self._spawn(worker.index, worker.device)

    def _dispatch(self, pending: deque, results: list) -> None:
        for job in list(pending):
            if job.worker is not None and self.workers[job.worker].lost:
                pending.remove(job)
                results[job.position] = WorkerDied(
                    f"worker {job.worker} could not start: {self.workers[job.worker].lost}", None
                )
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
        header = {**job.header, "client_id": job.client_id}
        if job.client_id is not None and job.client_id not in worker.built:
            header["shard"] = self.shards[job.client_id]
        if job.admitted:
            running = self._running(worker.device)
            for other in running:
                other.crowded = True
            job.crowded, job.device = bool(running), worker.device
        worker.job = job
        try:
            worker.channel.send(job.op, header, job.tensors)
        except OSError:
            pass  # it died: its sentinel says so next

    def _receive(self, worker: _Worker, pending: deque, results: list) -> None:
        """Everything `worker` has sent; then, if its process has ended, its death."""
        try:
            while worker.channel.conn.poll():
                self._handle(worker, *worker.channel.receive(), pending, results)
        except (EOFError, OSError):  # its end of the pipe closed: it is exiting, or must
            worker.process.join(STOP_S)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        if not worker.process.is_alive():
            self._died(worker, pending, results)

    def _handle(self, worker: _Worker, op: str, header: dict, tensors: dict, pending: deque, results: list) -> None:
        if op == "log":
            logging.getLogger(header["name"]).log(header["level"], "worker %d: %s", worker.index, header["message"])
        elif op == "ready":
            worker.ready, worker.pid = True, header["pid"]
        elif op == "failed":
            worker.lost = header["error"]
        else:
            job, worker.job = worker.job, None
            if op == "done":
                worker.built.update(job.header.get("shards", ()))
                if job.client_id is not None:
                    worker.built.add(job.client_id)
                if job.admitted:
                    self.admissions[job.device].measured(header["peak_bytes"])
                results[job.position] = header, tensors
            else:
                self._failed(
                    job,
                    WorkerError(
                        f"{header['error']} (client {job.client_id} on worker {worker.index}; traceback in run.log)"
                    ),
                    header["out_of_memory"],
                    pending,
                    results,
                )

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
        died = WorkerDied(
            f"worker {worker.index} (pid {worker.pid}, {worker.device}) died{doing}: "
            f"{_exit_reason(worker.process.exitcode)}",
            worker.process.exitcode,
        )
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
        process = self.context.Process(
            target=serve,
            name=f"flb-worker-{index}",
            args=(child, device, self.threads, self.load_model, self.build_clients, self.domain),
        )
        process.start()
        child.close()
        return _Worker(index, device, process, Channel(parent))


def _fit_job(position: int, client_id: int, round: int, tensors: dict) -> _Job:
    return _Job(position, "fit", client_id=client_id, header={"round": round}, tensors=tensors, admitted=True)


def _answer(client: ProxyClient, outcome) -> ClientUpdate | Exception:
    """A fit job's outcome as the coordinator takes it (the client's epsilon report kept on its proxy)."""
    if isinstance(outcome, Exception):
        return outcome
    update = read_update(*outcome)
    client.spent = update.privacy
    return update


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (the kernel's out-of-memory killer sends it; see dmesg)" if -exitcode == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with code {exitcode}"
