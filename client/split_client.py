"""The client's part of split learning: the embeddings, the first k and last m blocks, the norm and the LM head.

A `SplitClient` is an SFTClient (its shard, trl's tokenization and batches, its round seed, its secrets, its
signature) whose steps run half here and half on the trunk server (flb.split.cut.SplitChannel). One micro-batch: embed
and run the head blocks, add split.activation_noise (each token's hidden state clipped to split.activation_clip
first) from the client's secret generator, send that; run the tail blocks, the norm and the head on the trunk's
output, compute the loss (the labels stay here), send the gradient at the second cut; back-propagate the gradient
that comes back through the head blocks. After each step's last micro-batch both sides clip their own gradients
(sft max_grad_norm, per part) and step. The update the client signs is its part and the trunk as the session left
it (the server sends it at close): the joined adapter, which the strategy aggregates as any update.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from flb.split.cut import SplitChannel, SplitPlan, set_adapter_part
from flb.types import AdapterState, ClientUpdate


@dataclass
class ActivationNoise:
    """What the client does to the hidden states before they leave: an L2 clip per token, then Gaussian noise."""

    std: float = 0.0
    clip: float | None = None

    def apply(self, hidden, random):
        """`hidden` clipped and noised; `random` is the client's flb.privacy.secret_random.SecretRandom."""
        if self.clip is not None:
            norms = hidden.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            hidden = hidden * (self.clip / norms).clamp(max=1.0)
        if self.std > 0:
            hidden = hidden + random.normal(tuple(hidden.shape), self.std, hidden.dtype).to(hidden.device)
        return hidden


@dataclass
class SplitClient:
    """flb.types.Client over an SFTClient (`inner`) whose model may hold its own blocks only (client.split_node)."""

    inner: object  # client.sft.SFTClient
    plan: SplitPlan
    channel: SplitChannel
    noise: ActivationNoise
    personal: bool = False  # split.client_parts personal: start each round from its own part, not the global one

    def __post_init__(self):
        from flb.privacy.private_state import PrivateState

        self.personal_state = PrivateState(self.inner.private_dir / "split")

    @property
    def client_id(self) -> int:
        return self.inner.client_id

    @property
    def num_examples(self) -> int:
        return self.inner.num_examples

    @property
    def address(self) -> str | None:
        return self.inner.address

    def bind_ledger(self, domain) -> None:
        self.inner.bind_ledger(domain)

    def data_upload(self):
        return self.inner.data_upload()

    def privacy_spent(self) -> dict:
        return self.inner.privacy_spent()

    def fit(self, global_adapter: AdapterState, round: int, extras: AdapterState | None = None) -> ClientUpdate:
        from flb.model.load import get_adapter_state

        started = time.perf_counter()
        inner, model = self.inner, self.inner.model
        inner.begin_round(global_adapter, round)
        if self.personal:
            own = self.personal_state.load_before(round)
            if own is not None and own["tensors"]:
                set_adapter_part(model, own["tensors"])
        self.channel.open(self.client_id, round)
        loss = self._train()
        trunk = self.channel.close()
        own = self.plan.client_part(get_adapter_state(model))
        if self.personal:
            self.personal_state.save(round, {}, tensors=own)
        return inner.end_round({**own, **trunk}, global_adapter, round, extras or {}, None, loss, started)

    def _train(self) -> float:
        """The round's local steps across the cut (trl's batches, as trainer.train() would draw them, and the
        trainer's optimizer, schedule and clipping on the client's part); the mean loss per step."""
        import torch

        from client.batched import optimizer_steps
        from flb.model.sft_settings import IGNORE_INDEX, optimizer_and_scheduler

        model, trainer = self.inner.model, self.inner.trainer
        steps = optimizer_steps(trainer, self.inner.local_steps)
        parameters = [p for name, p in model.named_parameters() if p.requires_grad and not self.plan.in_trunk(name)]
        optimizer, scheduler = optimizer_and_scheduler(trainer.args, parameters, self.inner.local_steps, model)
        model.train()
        loss = 0.0
        for micro_batches in steps:
            targets = max(1, sum(int(batch["labels"][:, 1:].ne(IGNORE_INDEX).sum()) for batch in micro_batches))
            for index, batch in enumerate(micro_batches):
                loss += self.micro_batch(batch, targets, step=index == len(micro_batches) - 1)
            if trainer.args.max_grad_norm and trainer.args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(parameters, trainer.args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        return loss / len(steps)

    def micro_batch(self, batch: dict, targets: int, step: bool) -> float:
        """One micro-batch forward and backward across the cut; its loss (summed target log-probabilities over the
        step's `targets`). The parameters' gradients accumulate; nothing steps here but the trunk when `step`."""
        from flb.model.sft_settings import label_log_probs, mixed_precision

        model, plan = self.inner.model, self.plan
        device = model.get_base_model().device
        input_ids, mask, labels = (batch[key].to(device) for key in ("input_ids", "attention_mask", "labels"))
        precision = self.inner.trainer.args
        with mixed_precision(precision, device.type):
            hidden = plan.run(model, plan.head_range, plan.embed(model, input_ids), mask)
            sent = self.noise.apply(hidden, self.inner.random)
        returned = self.channel.forward(sent, mask).to(device).requires_grad_()
        with mixed_precision(precision, device.type):
            tail = plan.final_norm(model, plan.run(model, plan.tail_range, returned, mask))
            log_probs, _ = label_log_probs(model.get_base_model(), tail, labels)
        loss = -log_probs.sum() / targets
        loss.backward()
        grad = self.channel.backward(returned.grad, step=step, input_grad=sent.requires_grad)
        if sent.requires_grad:
            sent.backward(grad.to(sent.device, sent.dtype))
        return loss.item()


def drop_trunk(model, plan: SplitPlan) -> None:
    """Free the trunk's blocks of a client's model (their weights are the server's to run): each becomes an empty
    module, so the other blocks keep their names and the adapter's tensor names stay the same."""
    import ctypes
    import ctypes.util
    import gc
    import sys

    import torch

    layers = plan.blocks(model)
    for index in plan.trunk_layers:
        layers[index] = torch.nn.Identity()
    gc.collect()
    if sys.platform.startswith("linux"):  # glibc keeps freed heap pages mapped; hand them back to the system
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
