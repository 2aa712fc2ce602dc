"""lm-evaluation-harness tasks on the round's adapter, through its HFLM wrapper around the in-memory model.

lm-eval is optional (`pip install "lm-eval[hf]==0.4.13"`) and downloads task data at run time: offline
(HF_DATASETS_OFFLINE=1), a task works when its data is already in the datasets cache, or when the task is a YAML
file of your own whose `dataset_path`/`dataset_kwargs` read local files (eval.lm_eval.tasks takes YAML paths as
well as task names). The tasks are loaded when the suite is built, so missing data fails before any training.
Results: {task: {metric: value}}, the metric names as lm-eval writes them without the ",none" filter suffix.
"""

from __future__ import annotations

import difflib
import numbers
from pathlib import Path

from flb.config import LmEvalSettings
from flb.errors import ConfigError, DataError, first_line
from flb.model.generation import evaluation_mode

INSTALL_HINT = 'pip install "lm-eval[hf]==0.4.13"'


class LmEvalSuite:
    name = "lm_eval"

    def __init__(self, settings: LmEvalSettings, *, batch_size: int):
        self.settings = settings
        self.batch_size = batch_size
        self.task_manager = _task_manager()
        for task in settings.tasks:
            if task not in self.task_manager.all_tasks and not Path(task).is_file():
                close = difflib.get_close_matches(task, self.task_manager.all_tasks, n=1)
                hint = f"did you mean {close[0]!r}?" if close else "list them with `lm-eval ls tasks`"
                raise ConfigError(f"eval.lm_eval.tasks: {task!r} is not an lm-eval task, group or YAML file; {hint}")
        try:
            self.task_manager.load(list(settings.tasks))
        except Exception as exc:  # datasets raises many types for "offline" and "not found"
            raise DataError(
                f"eval.lm_eval.tasks: the data of {', '.join(settings.tasks)} cannot be loaded "
                f"({type(exc).__name__}: {first_line(exc)[:120]}); offline, put it in the datasets cache "
                "first or give a task YAML whose dataset_path reads local files"
            ) from None

    def __call__(self, model, tokenizer) -> dict:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        with evaluation_mode(model):
            results = simple_evaluate(
                model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size),
                tasks=list(self.settings.tasks),
                limit=self.settings.limit,
                task_manager=self.task_manager,
                log_samples=False,
                bootstrap_iters=0,
                # lm-eval reseeds Python, numpy and torch by default: that would change the next round's training
                random_seed=None,
                numpy_random_seed=None,
                torch_random_seed=None,
            )
        return task_metrics(results["results"])


def task_metrics(results: dict) -> dict:
    """{task: {metric: value}} from lm-eval's results, numbers only ("acc,none" -> "acc")."""
    return {
        task: {
            metric.removesuffix(",none"): value
            for metric, value in values.items()
            if isinstance(value, numbers.Real) and not isinstance(value, bool)
        }
        for task, values in results.items()
    }


def _task_manager():
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise ConfigError(
            f"eval.lm_eval: lm-evaluation-harness is not installed ({first_line(exc)}); "
            f"{INSTALL_HINT}, or drop lm_eval from eval.suites"
        ) from None
    return TaskManager()
