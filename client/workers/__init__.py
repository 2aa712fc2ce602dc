"""execution.mode: processes: the sampled clients train in a pool of worker processes, each with its own copy of the
model, so that several CPU cores or several GPUs (execution.devices, execution.workers on each) work at once.

The package's interface is `WorkerPool` (start it, then drive its proxy clients through `fit_all` as the round
coordinator drives any clients) and `WorkerError` (what a job raised in its worker). Inside:
  pool.py     the main process's side: starts the workers, hands out jobs, collects results, replaces workers that die
  loop.py     what runs in a worker process: its model, the clients it has built, its answer to each job
  channel.py  the messages between them: one frame (flb.frames) per message of a pipe

What crosses a pipe: frames, that is safetensors bytes with the operation and a JSON header in their metadata; the
main process unpickles nothing a worker sends. The one pickle is multiprocessing's own, from parent to child: the
functions a worker starts with (how to load the model and build a client, bound to the run's config), which a
spawned child receives from the process that started it.
"""

from client.workers.pool import WorkerError, WorkerPool

__all__ = ["WorkerError", "WorkerPool"]
