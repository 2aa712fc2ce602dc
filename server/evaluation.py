"""Evaluation of a global adapter: loss and perplexity on the held-out split, then the suites of eval.suites.

Loss uses trl's own tokenization and completion-only masking, so it measures exactly what the clients optimise (with
client.objective dpo: trl's DPO loss on the held-out pairs, beside preference_accuracy and preference_margin).
exact_match (the top-level `accuracy` and `accuracy_by_task`) is greedy decoding of the held-out prompts compared with
the reference answer (dpo: the chosen one), per task family. The other suites (server/suites/) put their metrics under
`suites`, one dict per suite, and how long each took under `suite_time_s`.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm
from transformers import TrainerCallback

from flb.config import DPOSettings, EvalSettings, SFTSettings
from flb.model.dpo import dpo_config, preference_margins, quiet_dpo_trainer
from flb.model.generation import exact_matches
from flb.model.load import set_adapter_state
from flb.model.sft_settings import quiet_trainer, sft_config, to_dataset
from flb.types import AdapterState


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
    dpo: DPOSettings | None = None  # client.objective dpo: the DPO loss and the preference metrics
    _trainer: object = field(init=False, repr=False)

    def __post_init__(self):
        output_dir = self.work_dir / "eval"
        dataset = to_dataset(self.records)  # trl insists on a train set; this trainer never trains
        if self.dpo is None:
            args = sft_config(self.sft, max_steps=1, output_dir=output_dir, use_cpu=self.use_cpu, seed=0)
            args.per_device_eval_batch_size = self.settings.batch_size
            self._trainer = quiet_trainer(self.model, self.tokenizer, args, dataset, dataset)
        else:
            args = dpo_config(self.sft, self.dpo, max_steps=1, output_dir=output_dir, use_cpu=self.use_cpu, seed=0)
            args.per_device_eval_batch_size = self.settings.batch_size
            self._trainer = quiet_dpo_trainer(self.model, self.tokenizer, args, dataset, dataset)
        self._trainer.add_callback(EvalProgress())

    def evaluate(self, adapter: AdapterState) -> dict:
        loss = self.eval_loss(adapter)  # sets the adapter on the model for everything below
        metrics = {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0))}
        if self.dpo is not None:
            metrics.update(self._preferences())
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
        matches = exact_matches(
            self.model,
            self.tokenizer,
            self.records,
            max_new_tokens=self.settings.max_new_tokens,
            batch_size=self.settings.batch_size,
            answer="chosen" if self.dpo is not None else "completion",
            label="eval exact_match",
        )
        for record, match in zip(self.records, matches):
            task = str(record.get(self.task_column, "all"))
            total[task] += 1
            correct[task] += int(match)
        by_task = {task: correct[task] / total[task] for task in sorted(total)}
        return {"accuracy": sum(correct.values()) / sum(total.values()), "accuracy_by_task": by_task}

    def _preferences(self) -> dict:
        """client.objective dpo: the share of held-out pairs whose chosen answer gains on the rejected one against
        the reference (margin > 0; the base model's margin is 0, so it starts at 0) and the mean margin (nats)."""
        trainer = self._trainer
        self.model.eval()
        batches = (trainer._prepare_inputs(batch) for batch in trainer.get_eval_dataloader())
        margins = preference_margins(self.model, batches)
        return {
            "preference_accuracy": float((margins > 0).float().mean()),
            "preference_margin": float(margins.mean()),
        }


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
