"""trl SFT settings shared by every client and by the evaluator, so both see identical tokens."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import math
import tempfile
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING

from flb.config import SFTSettings
from flb.errors import ConfigError, first_line, invalid_value, shown

if TYPE_CHECKING:
    import torch

# SFTConfig arguments FLB sets from its own keys; overriding them in sft.training_arguments would break the run
FLB_SETS = {
    "output_dir": "FLB gives each client its own folder in the run directory",
    "max_steps": "set local_steps instead",
    "seed": "set seed instead (each client and round derives its own from it)",
    "learning_rate": "set sft.learning_rate (and sft.lr_schedule) instead",
    "per_device_train_batch_size": "set sft.batch_size instead (DP-SGD's sample rate depends on it)",
    "per_device_eval_batch_size": "set eval.batch_size instead",
    "max_length": "set sft.max_length instead",
    "use_cpu": "set model.device_map instead",
}


def trainer_arguments(settings: SFTSettings, *, max_steps: int, output_dir: str | Path, use_cpu: bool, seed: int):
    """The arguments every trl trainer of ours takes (SFT's and DPO's): sft's steps, batch size, learning rate and
    length, no saving, logging or bars; on the CPU in float32, on a GPU under trl's default mixed precision."""
    arguments = dict(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        max_length=settings.max_length,
        lr_scheduler_type="constant",
        activation_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        use_cpu=use_cpu,
        seed=seed,
        dataloader_pin_memory=not use_cpu,
        disable_tqdm=True,
    )
    if use_cpu:  # trl's default bf16 autocast: on a CPU without bf16 units a SmolLM2 step takes 3.5 x as long
        arguments["bf16"] = False
    return arguments


def sft_config(settings: SFTSettings, *, max_steps: int, output_dir: str | Path, use_cpu: bool, seed: int):
    """trl's SFTConfig from our settings (trainer_arguments); `sft.training_arguments` override anything there."""
    from trl import SFTConfig

    arguments = trainer_arguments(settings, max_steps=max_steps, output_dir=output_dir, use_cpu=use_cpu, seed=seed)
    arguments.update(settings.training_arguments)
    try:
        return SFTConfig(**arguments)
    except TypeError as exc:
        raise ConfigError(f"sft.training_arguments: {exc}; use trl SFTConfig's argument names") from None


def round_learning_rate(settings: SFTSettings, round: int, num_rounds: int) -> float:
    """The clients' learning rate in `round` (1-based): sft.learning_rate throughout (constant), or cosine annealing
    over the rounds (cosine_over_rounds, as FlowerTune's protocol) from sft.learning_rate in round 1 to
    sft.min_learning_rate in round num_rounds. Within a round trl's lr_scheduler_type applies to it (constant
    unless sft.training_arguments says otherwise)."""
    if settings.lr_schedule == "constant" or num_rounds == 1:
        return settings.learning_rate
    progress = min(max(round - 1, 0), num_rounds - 1) / (num_rounds - 1)
    low, high = settings.min_learning_rate, settings.learning_rate
    return low + 0.5 * (high - low) * (1 + math.cos(math.pi * progress))


def check_training_arguments(settings: SFTSettings, *, use_cpu: bool) -> None:
    """Reject sft.training_arguments that SFTConfig would refuse, or that FLB sets itself, before anything runs:
    the ConfigError names sft.training_arguments.<key>."""
    from trl import SFTConfig

    hints = typing.get_type_hints(SFTConfig)
    names = [f.name for f in dataclasses.fields(SFTConfig) if f.init]
    for key, value in settings.training_arguments.items():
        _check_argument(key, value, names, hints)
    with tempfile.TemporaryDirectory() as scratch:
        if _config_failure(settings, scratch, use_cpu) is None:
            return
        for key, value in settings.training_arguments.items():  # which one SFTConfig refuses on its own
            failure = _config_failure(dataclasses.replace(settings, training_arguments={key: value}), scratch, use_cpu)
            if failure is not None:
                raise ConfigError(f"sft.training_arguments.{key}: SFTConfig refuses {shown(value)} ({failure})")
        raise ConfigError(
            f"sft.training_arguments: SFTConfig refuses these together "
            f"({_config_failure(settings, scratch, use_cpu)}); change one of them"
        )


def _check_argument(key: str, value, names: list[str], hints: dict) -> None:
    if key in FLB_SETS:
        raise ConfigError(f"sft.training_arguments.{key}: FLB sets it; {FLB_SETS[key]}")
    if key not in names:
        close = difflib.get_close_matches(key, names, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "use trl SFTConfig's argument names"
        raise ConfigError(f"sft.training_arguments.{key}: SFTConfig has no such argument; {hint}")
    if not _fits(value, hints[key]):  # SFTConfig checks few types; some wrong ones fail mid-run, or worse
        as_text = isinstance(value, str) and _fits(1.5, hints[key]) and _is_float(value)
        yaml_hint = " (YAML reads 1e-2 as text: write 1.0e-2)" if as_text else ""
        raise invalid_value(f"sft.training_arguments.{key}", value, f"{_type_name(hints[key])}{yaml_hint}")


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _config_failure(settings: SFTSettings, output_dir: str, use_cpu: bool) -> str | None:
    """Why SFTConfig refuses these settings, or None. OSError: a config file argument that does not exist;
    ImportError: an argument whose package (deepspeed...) is not installed."""
    try:
        sft_config(settings, max_steps=1, output_dir=output_dir, use_cpu=use_cpu, seed=0)
    except (TypeError, ValueError, OSError, ImportError) as exc:
        return first_line(exc)
    return None


def _fits(value, hint) -> bool:
    """Whether a YAML value is of a type SFTConfig's annotation allows (values are JSON-like: see flb.config)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, option) for option in args)
    if origin is typing.Literal:
        return any(value is option or (type(value) is type(option) and value == option) for option in args)
    if hint is typing.Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool or hint is str or hint is dict or origin is dict:
        return isinstance(value, origin or hint)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is list or origin is list:
        return isinstance(value, list) and (not args or all(_fits(item, args[0]) for item in value))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return any(value == member.value for member in hint)
    return isinstance(hint, type) and isinstance(value, hint)


def _type_name(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(option) for option in args)
    if origin is typing.Literal:
        return " | ".join(repr(option) for option in args)
    if hint is type(None):
        return "null"
    return str(hint) if args else getattr(hint, "__name__", str(hint))


def to_dataset(records: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(records)


def quiet_trainer(model, tokenizer, args, train_dataset, eval_dataset=None):
    """An SFTTrainer (target_scoring_trainer's) that prints nothing by itself (our own bars show rounds and steps)."""
    from datasets.utils.logging import disable_progress_bar
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    disable_progress_bar()
    trainer = target_scoring_trainer()(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=tokenizer
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


# Batches with other inputs (trl's padding_free position_ids...) and models whose logits are scaled keep trl's loss.
SCORED_INPUTS = {"input_ids", "attention_mask", "labels"}
IGNORE_INDEX = -100  # a label that carries no loss (trl's and transformers')
LOGIT_SCALES = ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
HEAD_CHUNK_ELEMENTS = 2**25  # logits the LM head computes at once: 128 MB in float32


@functools.cache
def target_scoring_trainer():
    """trl's SFTTrainer with its loss computed on the target positions only (target_log_probs): the same loss,
    trl's sum of the targets' negative log-probabilities over their count, but trl's fused LM-head kernel scores
    every position, prompt and padding included, on any device without Triton, which on the CPU costs more than a
    small model's whole step. Both in-process execution modes (client.batched) and the evaluation score this way."""
    import torch
    from trl import SFTTrainer

    class TargetScoringSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            base = self.accelerator.unwrap_model(model)
            text_config = base.config.get_text_config()
            if set(inputs) - SCORED_INPUTS or any(getattr(text_config, key, None) for key in LOGIT_SCALES):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            with self.accelerator.autocast():
                log_probs, mask = target_log_probs(
                    base, inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
                )
            count = mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = -log_probs.sum() / torch.as_tensor(count, device=log_probs.device).clamp(min=1)
            return (loss, {"loss": loss}) if return_outputs else loss

    return TargetScoringSFTTrainer


def target_log_probs(model, input_ids, attention_mask, labels):
    """log p(label) at every target position of a causal-LM batch (labels shifted by one, -100 ignored), row by
    row, and the mask of those positions. The LM head runs on the target positions only, in checkpointed chunks:
    a chunk's logits are recomputed in the backward pass instead of kept."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, base.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return label_log_probs(base, hidden, labels)


def label_log_probs(base, hidden, labels):
    """target_log_probs from the backbone's last hidden states (after its final norm): the LM head of `base` (the
    transformers model under peft) on the target positions only."""
    import torch
    from torch.utils.checkpoint import checkpoint

    hidden, targets = hidden[:, :-1], labels[:, 1:]
    mask = targets != IGNORE_INDEX
    head = base.get_output_embeddings()
    softcap = getattr(base.config.get_text_config(), "final_logit_softcapping", None)
    chunk = max(1, HEAD_CHUNK_ELEMENTS // head.weight.shape[0])
    hidden, targets = hidden[mask], targets[mask]
    parts = [
        checkpoint(
            _label_log_probs,
            hidden[start : start + chunk],
            targets[start : start + chunk],
            head,
            softcap,
            use_reentrant=False,
        )
        for start in range(0, len(targets), chunk)
    ]
    return (torch.cat(parts) if parts else hidden.sum(-1)), mask


def _label_log_probs(hidden, labels, head, softcap: float | None):
    logits = head(hidden).float()
    if softcap:
        logits = softcap * (logits / softcap).tanh()
    return logits.log_softmax(-1).gather(1, labels[:, None]).squeeze(1)


def optimizer_and_scheduler(args, parameters: list, num_steps: int, model=None):
    """The optimizer (class and arguments) and learning-rate scheduler a transformers Trainer with `args` would
    make for `parameters` of `model` over `num_steps` optimizer steps, at args.learning_rate."""
    from transformers import Trainer, get_scheduler

    optimizer_class, arguments = Trainer.get_optimizer_cls_and_kwargs(args, model)
    optimizer = optimizer_class([{"params": parameters, "weight_decay": args.weight_decay}], **arguments)
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=args.get_warmup_steps(num_steps),
        num_training_steps=num_steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )
    return optimizer, scheduler


def mixed_precision(args, device_type: str):
    """The autocast a Trainer with `args` trains under (bf16 or fp16 mixed precision), or none."""
    import contextlib

    import torch

    dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """`messages` in the tokenizer's chat template, ending where the assistant's reply begins."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def left_padded(ids: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows, left-padded so generation continues every row at the same column; and their attention mask."""
    import torch

    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, sequence in enumerate(ids):
        input_ids[row, width - len(sequence) :] = torch.tensor(sequence)
        attention_mask[row, width - len(sequence) :] = 1
    return input_ids, attention_mask
