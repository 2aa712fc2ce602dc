"""Evaluation of a global adapter on the held-out split: loss, perplexity, exact-match accuracy.

Loss uses trl's own tokenization and completion-only masking, so it measures exactly what the
clients optimise. Accuracy is greedy decoding compared with the reference answer, per task family.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from flb.config import EvalSettings, SFTSettings
from flb.modeling import set_adapter_state
from flb.training import left_padded, quiet_trainer, sft_config, to_dataset
from flb.types import AdapterState


@dataclass
class Evaluator:
    model: object
    tokenizer: object
    records: list[dict]
    settings: EvalSettings
    sft: SFTSettings
    work_dir: Path
    use_cpu: bool = True
    task_column: str = "task"
    _trainer: object = field(init=False, repr=False)

    def __post_init__(self):
        args = sft_config(self.sft, max_steps=1, output_dir=self.work_dir / "eval", use_cpu=self.use_cpu, seed=0)
        args.per_device_eval_batch_size = self.settings.batch_size
        dataset = to_dataset(self.records)  # trl insists on a train set; this trainer never trains
        self._trainer = quiet_trainer(self.model, self.tokenizer, args, dataset, dataset)

    def evaluate(self, adapter: AdapterState) -> dict:
        loss = self.eval_loss(adapter)
        metrics = {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0))}
        if "prompt" in self.records[0]:
            metrics.update(self._exact_match())
        return metrics

    def eval_loss(self, adapter: AdapterState) -> float:
        set_adapter_state(self.model, adapter)
        return float(self._trainer.evaluate()["eval_loss"])

    @torch.no_grad()
    def _exact_match(self) -> dict:
        correct, total = defaultdict(int), defaultdict(int)
        size = self.settings.batch_size
        for start in range(0, len(self.records), size):
            batch = self.records[start:start + size]
            for record, answer in zip(batch, self._generate([r["prompt"] for r in batch])):
                task = str(record.get(self.task_column, "all"))
                total[task] += 1
                correct[task] += int(answer.strip() == record["completion"][-1]["content"].strip())
        by_task = {task: correct[task] / total[task] for task in sorted(total)}
        return {"accuracy": sum(correct.values()) / sum(total.values()), "accuracy_by_task": by_task}

    def _generate(self, prompts: list[list[dict]]) -> list[str]:
        was_training = self.model.training
        self.model.eval()
        input_ids, attention_mask = left_padded(self.tokenizer, prompts)
        device = next(self.model.parameters()).device
        output = self.model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                     max_new_tokens=self.settings.max_new_tokens, do_sample=False, use_cache=True,
                                     pad_token_id=self.tokenizer.pad_token_id)
        self.model.train(was_training)
        return self.tokenizer.batch_decode(output[:, input_ids.shape[1]:], skip_special_tokens=True)
