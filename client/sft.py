"""A client that fine-tunes the shared LoRA model on its own shard with trl's SFTTrainer.

The base model is shared by every client in the process: a client only swaps the adapter in,
trains `local_steps`, and reads the adapter out. Its trainer (and so its tokenized shard) is built
once and reused every round with a fresh optimizer.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from client.privacy import NoPrivacy, UpdatePrivacy
from flb.config import SFTSettings
from flb.errors import ConfigError
from flb.digests import adapter_digest, records_digest
from flb.modeling import get_adapter_state, set_adapter_state
from flb.seeding import derived_seed
from flb.types import AdapterState, ClientUpdate


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


@dataclass
class SFTClient:
    """Implements flb.types.Client over a shared peft model."""

    client_id: int
    records: list[dict]
    model: object
    tokenizer: object
    settings: SFTSettings
    local_steps: int
    seed: int
    work_dir: Path
    use_cpu: bool = True
    privacy: UpdatePrivacy = field(default_factory=NoPrivacy)
    _trainer: object = field(default=None, init=False, repr=False)

    @property
    def num_examples(self) -> int:
        return len(self.records)

    @property
    def data_digest(self) -> str:
        return records_digest(self.records)

    def fit(self, global_adapter: AdapterState, round: int) -> ClientUpdate:
        from transformers import set_seed

        started = time.perf_counter()
        set_adapter_state(self.model, global_adapter)
        trainer = self._get_trainer()
        set_seed(derived_seed(self.seed, round, self.client_id))
        trainer.optimizer, trainer.lr_scheduler = None, None
        result = trainer.train()
        trainer.optimizer, trainer.lr_scheduler = None, None  # keep memory flat across clients
        local, privacy = self.privacy.privatize(get_adapter_state(self.model), global_adapter, round)
        return ClientUpdate(
            client_id=self.client_id, round=round, tensors=local, num_examples=self.num_examples,
            train_loss=float(result.training_loss), wall_time_s=time.perf_counter() - started,
            num_bytes=sum(t.numel() * t.element_size() for t in local.values()), digest=adapter_digest(local),
            privacy=privacy,
        )

    def _get_trainer(self):
        if self._trainer is None:
            from trl import SFTTrainer

            args = sft_config(self.settings, max_steps=self.local_steps, output_dir=self.work_dir / f"client_{self.client_id}",
                              use_cpu=self.use_cpu, seed=self.seed)
            self._trainer = SFTTrainer(model=self.model, args=args, train_dataset=to_dataset(self.records),
                                       processing_class=self.tokenizer)
        return self._trainer
