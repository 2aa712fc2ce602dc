"""Sample-level DP for one client: opacus DP-SGD on the LoRA parameters with Poisson sampling
(Abadi et al., 2016, https://arxiv.org/abs/1607.00133).

trl's trainer cannot be wrapped by opacus, so this is the client's own loop, over the SAME tokenized
shard and collator its SFTTrainer prepared, under the same mixed-precision autocast, if any
(flb.model.sft_settings.sft_config): both modes train on identical tokens at the same precision. The accountant
lives as long as the client, so epsilon composes over every round it trains in. Every client and the
evaluator share one peft model: it is wrapped in a GradSampleModule only while this client trains and
unwrapped after (hooks and per-sample attributes removed), so nobody else sees opacus.
"""

from __future__ import annotations

import math
import warnings

from flb.local_objective import GradientCorrection
from flb.privacy.accounting import NoisePlan, PlannedNoise
from flb.privacy.secret_random import SecretRandom
from flb.types import AdapterState


class DPSGD(PlannedNoise):
    """Add/remove of one example of the client's shard: each step's per-example gradients are clipped to C and
    N(0, (zC)^2) is added to their sum (replace adjacency is refused by the config: opacus' accountant is exact
    for add/remove under Poisson sampling only)."""

    mechanism = "local_dpsgd"

    def __init__(self, *, clip_norm: float, delta: float, sample_rate: float, local_steps: int, plan: NoisePlan):
        self.clip_norm, self.delta, self.sample_rate, self.local_steps = clip_norm, delta, sample_rate, local_steps
        super().__init__(plan, adjacency="add_remove")

    def train(self, model, trainer, random: SecretRandom, correction: GradientCorrection | None = None) -> float:
        """`local_steps` DP-SGD steps on `model`'s trainable (LoRA) parameters over `trainer`'s tokenized shard, at
        the trainer's learning rate (the round's, flb.model.sft_settings.round_learning_rate); the mean loss of the
        batches. Batches and noise come from the client's secret generator. `correction`
        (FedProx's data-independent term, flb.local_objective) is applied to the noised gradient: post-processing."""
        import torch
        from opacus import GradSampleModule

        parameters = [p for p in model.parameters() if p.requires_grad]
        device = parameters[0].device
        module = GradSampleModule(model)
        try:
            optimizer = secret_noise_optimizer(
                torch.optim.AdamW(parameters, lr=trainer.args.learning_rate, weight_decay=0.0),
                random=random,
                noise_multiplier=self.noise_multiplier,
                max_grad_norm=self.clip_norm,
                expected_batch_size=self.sample_rate * len(trainer.train_dataset),
            )
            optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate))
            if correction is not None:  # the inner AdamW steps only after opacus has clipped, noised and scaled
                optimizer.original_optimizer.register_step_pre_hook(lambda *_: correction.apply())
            module.train()
            with warnings.catch_warnings():  # opacus' hook on the first LoRA layer, whose input needs no gradient
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                losses = [
                    dp_step(module, optimizer, batch, device, trainer.accelerator.autocast)
                    for batch in poisson_batches(
                        trainer.train_dataset, trainer.data_collator, self.sample_rate, self.local_steps, random
                    )
                ]
        finally:
            module._close()
            for p in parameters:
                vars(p).pop("summed_grad", None)  # the one attribute DPOptimizer leaves behind
        losses = [loss for loss in losses if loss is not None]
        return sum(losses) / len(losses) if losses else math.nan

    def privatize(self, local: AdapterState, global_adapter: AdapterState, random: SecretRandom) -> AdapterState:
        return local  # already private: every step that made it was clipped and noised


def poisson_batches(dataset, collator, sample_rate: float, steps: int, random: SecretRandom):
    """`steps` batches; every example joins each one independently with probability `sample_rate`, decided by the
    secret generator (Poisson sampling, what the accountant assumes). An empty batch comes out as None."""
    for _ in range(steps):
        chosen = random.bernoulli(len(dataset), sample_rate).nonzero()[0]
        yield collator([dataset[int(i)] for i in chosen]) if len(chosen) else None


def secret_noise_optimizer(optimizer, *, random: SecretRandom, **kwargs):
    """opacus' DPOptimizer over `optimizer`, its Gaussian noise drawn from `random` instead of a torch generator
    (whose state an observer of the seed could rebuild)."""
    from opacus.optimizers import DPOptimizer
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    class SecretNoiseDPOptimizer(DPOptimizer):
        def add_noise(self):
            std = self.noise_multiplier * self.max_grad_norm
            for p in self.params:
                _check_processed_flag(p.summed_grad)
                p.grad = (p.summed_grad + random.normal(p.summed_grad.shape, std).to(p.summed_grad)).view_as(p)
                _mark_as_processed(p.summed_grad)

    return SecretNoiseDPOptimizer(optimizer, **kwargs)


def dp_step(module, optimizer, batch, device, autocast) -> float | None:
    """One DP-SGD step; the loss, or None for an empty Poisson batch, which still takes its noise-only step
    (and is counted), as the analysis of Poisson sampling assumes. The forward runs in `autocast` explicitly:
    accelerate patches it into the model's forward only once some trainer has run, and a resumed run must
    compute exactly what an uninterrupted one did."""
    if batch is None:
        for p in optimizer.params:
            p.grad_sample = p.new_zeros((0, *p.shape))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return None
    with autocast():
        logits = module(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        ).logits
    loss = per_example_mean_loss(logits, batch["labels"].to(device))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def per_example_mean_loss(logits, labels):
    """Mean over examples of each example's mean next-token loss on its labelled (completion) tokens.

    Unlike a token mean over the whole batch, each example's gradient then depends on that example alone,
    which per-example clipping needs to bound one example's influence. Only labelled positions go through
    the softmax: over a 49k vocabulary it would otherwise cost more than a small model's whole step.
    """
    import torch
    import torch.nn.functional as F

    targets = labels[:, 1:]
    counted = targets != -100
    token_loss = F.cross_entropy(logits[:, :-1][counted].float(), targets[counted], reduction="none")
    per_example = torch.zeros(len(labels), dtype=token_loss.dtype, device=token_loss.device)
    per_example = per_example.index_add(0, counted.nonzero()[:, 0], token_loss)
    return (per_example / counted.sum(dim=1).clamp(min=1)).mean()
