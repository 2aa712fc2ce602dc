"""Evaluation of a global adapter: loss and perplexity on the held-out split, then the suites of eval.suites.

Loss uses trl's own tokenization and completion-only masking, so it measures exactly what the
clients optimise. exact_match (the top-level `accuracy` and `accuracy_by_task`) is greedy decoding of the
held-out prompts compared with the reference answer, per task family. The other suites (server/suites/) put their
metrics under `suites`, one dict per suite, and how long each took under `suite_time_s`.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm
from transformers import TrainerCallback

from flb.config import EvalSettings, SFTSettings
from flb.model.load import set_adapter_state
from flb.model.sft_settings import chat_prompt, quiet_trainer, sft_config, to_dataset
from flb.types import AdapterState
from server.suites.generation import greedy_continuations


@dataclass
class Evaluator:
    model: object
    tokenizer: object
    records: list[dict]
    settings: EvalSettings
    sft: SFTSettings
    work_dir: Path
    suites: list = field(default_factory=list)  # server.suites.build_suites(settings): built once, before the run
    use_cpu: bool = True
    task_column: str = "task"
    _trainer: object = field(init=False, repr=False)

    def __post_init__(self):
        args = sft_config(self.sft, max_steps=1, output_dir=self.work_dir / "eval", use_cpu=self.use_cpu, seed=0)
        args.per_device_eval_batch_size = self.settings.batch_size
        dataset = to_dataset(self.records)  # trl insists on a train set; this trainer never trains
        self._trainer = quiet_trainer(self.model, self.tokenizer, args, dataset, dataset)
        self._trainer.add_callback(EvalProgress())

    def evaluate(self, adapter: AdapterState) -> dict:
        loss = self.eval_loss(adapter)  # sets the adapter on the model for everything below
        metrics = {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0))}
        if "exact_match" in self.settings.suites and "prompt" in self.records[0]:
            metrics.update(self._exact_match())
        if self.suites:
            metrics["suites"], metrics["suite_time_s"] = {}, {}
            for suite in self.suites:
                started = time.perf_counter()
                metrics["suites"][suite.name] = suite(self.model, self.tokenizer)
                metrics["suite_time_s"][suite.name] = round(time.perf_counter() - started, 3)
        return metrics

    def eval_loss(self, adapter: AdapterState) -> float:
        set_adapter_state(self.model, adapter)
        return float(self._trainer.evaluate()["eval_loss"])

    def _exact_match(self) -> dict:
        correct, total = defaultdict(int), defaultdict(int)
        answers = greedy_continuations(
            self.model,
            self.tokenizer,
            [chat_prompt(self.tokenizer, r["prompt"]) for r in self.records],
            max_new_tokens=self.settings.max_new_tokens,
            batch_size=self.settings.batch_size,
            label="eval exact_match",
        )
        for record, answer in zip(self.records, answers):
            task = str(record.get(self.task_column, "all"))
            total[task] += 1
            correct[task] += int(answer.strip() == record["completion"][-1]["content"].strip())
        by_task = {task: correct[task] / total[task] for task in sorted(total)}
        return {"accuracy": sum(correct.values()) / sum(total.values()), "accuracy_by_task": by_task}


class EvalProgress(TrainerCallback):
    """A bar over the held-out loss's batches while the trainer evaluates."""

    bar = None

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self.bar is None:
            self.bar = tqdm(total=len(eval_dataloader), desc="eval loss", leave=False)
        self.bar.update(1)

    def on_evaluate(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
