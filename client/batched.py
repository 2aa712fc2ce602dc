"""Batched execution (`execution.mode: batched`): the sampled clients train together, one forward and one backward
pass per step over the one shared, frozen base model.

Each client trains its own copy of every LoRA tensor (`StackedLoRA`). In each LoRA layer the frozen matmul runs once
on the whole joined batch; peft's own LoRA path is switched off and a forward hook adds, to every example, the delta
of its own client's adapter: the clients' A and B are stacked along a client axis and each example picks its slice
(a batched matmul), so an example is multiplied by its own client's adapter only.

What makes the result equal to training the clients one by one (`tests/test_execution_batched.py`):
- batches: each client's come from its own trl trainer's dataloader (trl's tokenization and collation), drawn right
  after the client's round seed, as `trainer.train()` draws them; one client's rows are right-padded to the joined
  batch's length (attention mask 0, labels -100); the forward runs under the trainers' mixed-precision autocast,
  if any (flb.model.sft_settings.sft_config);
- loss: each client's is the sequential one (flb.model.sft_settings.target_log_probs): the log-probabilities of its
  target tokens summed and divided by its own count of target tokens in the optimizer step; the sum over clients is
  back-propagated, and a client's loss depends on its adapter only, so each adapter receives exactly its own gradient;
- the optimizer step: per client, the trainer's optimizer class and arguments, its learning-rate scheduler, its
  gradient clipping (`max_grad_norm` on that client's gradients alone) and the strategy's gradient correction.
Equal up to float summation order: the joined batch changes the order of additions, not what is added.
DP-SGD is refused in this mode (flb.config): opacus clips per example through the model's own layers.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm.auto import trange

from flb.errors import ClientLate, first_line
from flb.model.sft_settings import IGNORE_INDEX, SCORED_INPUTS, optimizer_and_scheduler, target_log_probs
from flb.scheduler import is_out_of_memory, peak_memory
from flb.types import AdapterState, ClientUpdate

log = logging.getLogger(__name__)


class StackedLoRA:
    """Per-client copies of every LoRA tensor of a peft model, and the routing that applies client k's copy to the
    examples of client k."""

    def __init__(self, model):
        from peft.tuners.lora import LoraLayer

        self.model = model
        self.layers = {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}
        for name, module in self.layers.items():
            if module.lora_variant.get("default") is not None:
                raise ValueError(
                    f"execution.mode batched: {name} uses a LoRA variant (DoRA...), which batched mode "
                    "does not implement; use sequential"
                )
        self.trainable_names = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
        self.clients: list[dict] = []  # per client: state-dict name -> its own tensor (a leaf when trainable)
        self.example_clients = None  # per example of the joined batch: the index of its client in self.clients

    def add_client(self, adapter: AdapterState) -> dict:
        """A copy of `adapter` that trains like the model's own LoRA tensors (ffa's frozen A stays frozen)."""
        tensors = {}
        for name in self.layers:
            for part in ("lora_A", "lora_B"):
                key = f"{name}.{part}.weight"
                own = self.layers[name].get_parameter(f"{part}.default.weight")
                tensors[key] = (
                    adapter[key]
                    .to(own.device, own.dtype)
                    .clone()
                    .requires_grad_(f"{name}.{part}.default.weight" in self.trainable_names)
                )
        self.clients.append(tensors)
        return tensors

    @staticmethod
    def trainable(tensors: dict) -> dict:
        return {name: tensor for name, tensor in tensors.items() if tensor.requires_grad}

    @staticmethod
    def state(tensors: dict) -> AdapterState:
        return {name: tensor.detach().to("cpu", copy=True) for name, tensor in tensors.items()}

    @contextlib.contextmanager
    def routing(self, example_clients):
        """While inside, the model's LoRA layers apply to example i the adapter of client example_clients[i]."""
        hooks = [module.register_forward_hook(self._hook(name)) for name, module in self.layers.items()]
        for module in self.layers.values():
            # peft's switch, set directly: its disable_adapter_layers() would also flip requires_grad on the
            # model's own LoRA tensors (and unfreeze ffa's A when switched back)
            module._disable_adapters = True
        self.example_clients = example_clients
        try:
            yield
        finally:
            self.example_clients = None
            for module in self.layers.values():
                module._disable_adapters = False
            for hook in hooks:
                hook.remove()

    def _hook(self, name: str):
        import torch

        a_key, b_key = f"{name}.lora_A.weight", f"{name}.lora_B.weight"

        def add_client_deltas(module, args, output):
            a = torch.stack([tensors[a_key] for tensors in self.clients])[self.example_clients]  # [batch, r, in]
            b = torch.stack([tensors[b_key] for tensors in self.clients])[self.example_clients]  # [batch, out, r]
            x = module.lora_dropout["default"](args[0]).to(a.dtype)
            delta = torch.bmm(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2)) * module.scaling["default"]
            return output + delta.to(output.dtype)

        return add_client_deltas


@dataclass
class ClientRun:
    """One client's part of a batched round: its optimizer steps (each a list of trl micro-batches), its adapter
    copy, optimizer, scheduler and gradient correction, and its summed loss."""

    client: object  # client.sft.SFTClient
    steps: list
    tensors: dict
    optimizer: object
    scheduler: object
    correction: object
    loss: float = 0.0


@dataclass
class BatchedFit:
    """flb.types.FitAll for execution.mode batched: the sampled clients trained together in groups. The
    first group is one client, whose peak memory sizes the next groups to the budget (flb.scheduler.Admission);
    a group that runs out of memory is retried as smaller groups. A group that fails otherwise is retried one client
    at a time, so a failure is that client's alone. A client's result does not depend on the group it trained in
    (each example sees its own client's adapter only; on this CPU the updates are bitwise the same alone or
    grouped), so a resumed run ends where the uninterrupted one does."""

    model: object
    tokenizer: object
    admission: object  # flb.scheduler.Admission
    device: str

    def __call__(
        self, clients: Sequence, global_adapter: AdapterState, round: int, extras: AdapterState, deadline=None
    ) -> list[ClientUpdate | Exception]:
        """flb.types.FitAll: the clients in groups as the admission allows; a group whose turn comes once
        the `deadline` (flb.types.RoundDeadline) has closed the round is late, and so is what a group sends after."""
        results: dict[int, ClientUpdate | Exception] = {}
        pending = list(clients)
        while pending:
            if deadline and deadline.closed(list(results.values())):
                results.update({client.client_id: ClientLate.before_turn(client.client_id) for client in pending})
                break
            before = list(results.values())
            group = pending[: self.admission.concurrency]
            outcome = self._train_group(group, global_adapter, round, extras)
            if isinstance(outcome, Exception) and len(group) > 1:
                if not is_out_of_memory(outcome):
                    for client in group:
                        results[client.client_id] = self._alone(client, global_adapter, round, extras)
                    pending = pending[len(group) :]
                continue  # out of memory: the admission lowered the concurrency; retry as smaller groups
            for client, result in zip(group, outcome if isinstance(outcome, list) else [outcome]):
                results[client.client_id] = (
                    deadline.on_arrival(before, result, client.client_id) if deadline else result
                )
            pending = pending[len(group) :]
        return [results[client.client_id] for client in clients]

    def _train_group(self, group: list, global_adapter: AdapterState, round: int, extras: AdapterState):
        """The group's updates, or the exception that stopped it (an out-of-memory one lowers the admission)."""
        try:
            with peak_memory(self.device) as peak:
                updates = train_together(group, self.model, self.tokenizer, global_adapter, round, extras)
        except Exception as exc:
            if is_out_of_memory(exc):
                self.admission.out_of_memory()
            if len(group) == 1:
                log.exception("round %d: client %d failed", round, group[0].client_id)
            else:
                log.warning(
                    "round %d: clients %s failed together (%s: %s)",
                    round,
                    [c.client_id for c in group],
                    type(exc).__name__,
                    first_line(exc),
                )
            return exc
        self.admission.measured(peak.bytes // len(group))
        return updates

    def _alone(self, client, global_adapter: AdapterState, round: int, extras: AdapterState):
        outcome = self._train_group([client], global_adapter, round, extras)
        return outcome if isinstance(outcome, Exception) else outcome[0]


def train_together(
    clients: Sequence, model, tokenizer, global_adapter: AdapterState, round: int, extras: AdapterState
) -> list[ClientUpdate]:
    """One round of `clients` (client.sft.SFTClient sharing `model`) trained together; their updates, in order."""
    started = time.perf_counter()
    stacked = StackedLoRA(model)
    runs = [_client_run(client, stacked, global_adapter, round, extras) for client in clients]
    model.train()
    pad_id = tokenizer.pad_token_id
    for step in trange(max(len(run.steps) for run in runs), desc=f"{len(clients)} clients together", leave=False):
        _step(model, stacked, runs, step, pad_id)
    return [
        run.client.end_round(
            stacked.state(run.tensors),
            global_adapter,
            round,
            extras,
            run.correction,
            run.loss / len(run.steps),
            started,
        )
        for run in runs
    ]


def _client_run(
    client, stacked: StackedLoRA, global_adapter: AdapterState, round: int, extras: AdapterState
) -> ClientRun:
    """The client's round set up as its own fit() would: its seed, then its batches, its optimizer and scheduler
    from its trainer's arguments."""
    client.begin_round(global_adapter, round)
    trainer = client.trainer
    steps = optimizer_steps(trainer, client.local_steps)
    tensors = stacked.add_client(global_adapter)
    trainable = stacked.trainable(tensors)
    optimizer, scheduler = optimizer_and_scheduler(
        trainer.args, list(trainable.values()), client.local_steps, client.model
    )
    correction = client.objective.correction(trainable, global_adapter, extras, client.variate)
    return ClientRun(client, steps, tensors, optimizer, scheduler, correction)


def optimizer_steps(trainer, max_steps: int) -> list[list[dict]]:
    """The micro-batches of each of the trainer's first `max_steps` optimizer steps, as its train() groups them:
    epochs of its dataloader (set_epoch each), gradient_accumulation_steps batches per step, the last step of an
    epoch taking what is left."""
    loader = trainer.get_train_dataloader()
    accumulation = trainer.args.gradient_accumulation_steps
    steps, epoch = [], 0
    while len(steps) < max_steps:
        for sampler in (loader, getattr(getattr(loader, "batch_sampler", None), "batch_sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
        batches = list(loader)
        for start in range(0, len(batches), accumulation):
            steps.append(batches[start : start + accumulation])
            if len(steps) == max_steps:
                break
        epoch += 1
    return steps


def _step(model, stacked: StackedLoRA, runs: list[ClientRun], step: int, pad_id: int) -> None:
    """One optimizer step of every client that has one left: its micro-batches joined with the others', then its own
    clipping, correction, optimizer and scheduler step."""
    import torch

    active = [(index, run) for index, run in enumerate(runs) if step < len(run.steps)]
    targets = {index: max(1, sum(int(_targets(batch)) for batch in run.steps[step])) for index, run in active}
    autocast = runs[0].client.trainer.accelerator.autocast
    for micro in range(max(len(run.steps[step]) for _, run in active)):
        parts = [(index, run.steps[step][micro]) for index, run in active if micro < len(run.steps[step])]
        inputs, example_clients = join_batches(
            [batch for _, batch in parts], [index for index, _ in parts], pad_id, runs[0].client.trainer.args.max_length
        )
        inputs = {key: value.to(model.device) for key, value in inputs.items()}
        with stacked.routing(example_clients.to(model.device)), autocast():
            log_probs, mask = target_log_probs(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
        owners = example_clients.to(model.device)[:, None].expand_as(mask)[mask]
        losses = [-log_probs[owners == index].sum() / targets[index] for index, _ in parts]
        torch.stack(losses).sum().backward()
        for (index, _), loss in zip(parts, losses):
            runs[index].loss += loss.item()
    for _, run in active:
        _optimizer_step(run, run.client.trainer.args.max_grad_norm)


def _optimizer_step(run: ClientRun, max_grad_norm: float) -> None:
    import torch

    trainable = list(StackedLoRA.trainable(run.tensors).values())
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    if run.correction is not None:
        run.correction.apply()
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)


def _targets(batch: dict):
    """Target tokens of a micro-batch as trl counts them for its loss (labels shifted by one)."""
    return batch["labels"][..., 1:].ne(IGNORE_INDEX).sum()


def join_batches(batches: list[dict], owners: list[int], pad_id: int, length: int):
    """One batch of the clients' micro-batches, each right-padded to `length` (sft.max_length: mask 0, labels ignored),
    and the index of the client each row belongs to. The length is the same whichever clients are joined: padded to
    the longest batch of the group instead, an example's attention would run over a length that depends on the
    other clients' batches, and on some CPUs (an AMD EPYC, AVX2) its result then differed in the last bits."""
    import torch

    extra = set().union(*batches) - SCORED_INPUTS
    if extra:
        raise ValueError(
            f"execution.mode batched: trl's batches carry {sorted(extra)} (padding_free or another "
            "collator in sft.training_arguments?), which batched mode does not join; use sequential"
        )

    def padded(tensor, value):
        return torch.nn.functional.pad(tensor, (0, length - tensor.shape[1]), value=value)

    joined = {
        "input_ids": torch.cat([padded(b["input_ids"], pad_id) for b in batches]),
        "attention_mask": torch.cat([padded(b["attention_mask"], 0) for b in batches]),
        "labels": torch.cat([padded(b["labels"], IGNORE_INDEX) for b in batches]),
    }
    owner = torch.cat(
        [torch.full((len(b["input_ids"]),), index, dtype=torch.long) for b, index in zip(batches, owners)]
    )
    return joined, owner
