"""trl SFT settings shared by every client and by the evaluator, so both see identical tokens."""
from __future__ import annotations

from pathlib import Path

from flb.config import SFTSettings
from flb.errors import ConfigError


def sft_config(settings: SFTSettings, *, max_steps: int, output_dir: str | Path, use_cpu: bool, seed: int):
    """trl's SFTConfig from our settings; `sft.training_arguments` override anything here."""
    from trl import SFTConfig

    arguments = dict(
        output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size, learning_rate=settings.learning_rate,
        max_length=settings.max_length, lr_scheduler_type="constant", activation_checkpointing=False,
        report_to="none", save_strategy="no", logging_strategy="no", use_cpu=use_cpu, seed=seed,
        dataloader_pin_memory=not use_cpu, disable_tqdm=True,
    )
    arguments.update(settings.training_arguments)
    try:
        return SFTConfig(**arguments)
    except TypeError as exc:
        raise ConfigError(f"sft.training_arguments: {exc}; use trl SFTConfig's argument names") from None


def to_dataset(records: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(records)


def quiet_trainer(model, tokenizer, args, train_dataset, eval_dataset=None):
    """An SFTTrainer that prints nothing by itself (our own bars show rounds and steps)."""
    from datasets.utils.logging import disable_progress_bar
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import SFTTrainer

    disable_progress_bar()
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def left_padded(tokenizer, prompts: list[list[dict]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-templated prompts, left-padded so generation continues every row at the same column."""
    import torch

    texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, sequence in enumerate(ids):
        input_ids[row, width - len(sequence):] = torch.tensor(sequence)
        attention_mask[row, width - len(sequence):] = 1
    return input_ids, attention_mask
