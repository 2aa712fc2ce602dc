"""The eval section and its suites."""

from __future__ import annotations

from dataclasses import dataclass

from flb.config.fields import described, one_of, optional_limit
from flb.errors import require


@dataclass(frozen=True)
class MultipleChoiceSettings:
    path: str | None = described(
        "MMLU-style questions: a .jsonl/.json/.parquet file, a dataset directory or a hub "
        "name, with question, choices (or A, B, C, D columns), answer (a letter or an index) "
        "and optionally subject.",
        default=None,
    )
    split: str = described("The split read from a dataset directory or hub name.", default="test")
    limit: int | None = described("Evaluate the first N questions only; null: all.", default=None)

    def __post_init__(self):
        optional_limit("eval.multiple_choice.limit", self.limit)


@dataclass(frozen=True)
class HumanEvalSettings:
    limit: int | None = described("Evaluate the first N of the 164 problems only; null: all.", default=None)
    max_new_tokens: int = described("Greedy decoding budget per completion.", default=256)
    timeout_s: float = described(
        "Wall-clock limit for one completion's tests, in its own sandboxed process.", default=10.0
    )
    memory_mb: int = described("Address-space limit of that process, in MiB.", default=1024)

    def __post_init__(self):
        optional_limit("eval.humaneval.limit", self.limit)
        require(self.max_new_tokens >= 1, "eval.humaneval.max_new_tokens", self.max_new_tokens, "an integer >= 1")
        require(self.timeout_s > 0, "eval.humaneval.timeout_s", self.timeout_s, "a number > 0")
        require(self.memory_mb >= 64, "eval.humaneval.memory_mb", self.memory_mb, "an integer >= 64")


@dataclass(frozen=True)
class LmEvalSettings:
    tasks: list[str] = described(
        "lm-evaluation-harness task names, e.g. [arc_easy]; their data must be available "
        "offline (HF_DATASETS_OFFLINE).",
        default_factory=list,
    )
    limit: int | None = described("Examples per task; null: all.", default=None)

    def __post_init__(self):
        optional_limit("eval.lm_eval.limit", self.limit)


EVAL_SUITES = ("exact_match", "multiple_choice", "humaneval", "lm_eval")


@dataclass(frozen=True)
class EvalSettings:
    size: int = described("Held-out examples (never trained on) evaluated after every round.", default=48)
    max_new_tokens: int = described("Greedy decoding budget for exact-match accuracy.", default=24)
    batch_size: int = described("Evaluation batch size.", default=16)
    suites: list[str] = described(
        "What is measured every round besides the held-out loss: " + " | ".join(EVAL_SUITES) + ".",
        default_factory=lambda: ["exact_match"],
    )
    multiple_choice: MultipleChoiceSettings = described(
        "The multiple_choice suite.", default_factory=MultipleChoiceSettings
    )
    humaneval: HumanEvalSettings = described("The humaneval suite.", default_factory=HumanEvalSettings)
    lm_eval: LmEvalSettings = described("The lm_eval suite.", default_factory=LmEvalSettings)
    personal_size: int = described(
        "With strategy.personalization fedsa or ditto: records each client holds out of its own shard (never trained "
        "on, never sent) to compare its personal adapter with the global one after every round.",
        default=4,
    )

    def __post_init__(self):
        require(self.size >= 1, "eval.size", self.size, "an integer >= 1")
        require(self.max_new_tokens >= 1, "eval.max_new_tokens", self.max_new_tokens, "an integer >= 1")
        require(self.batch_size >= 1, "eval.batch_size", self.batch_size, "an integer >= 1")
        require(self.personal_size >= 1, "eval.personal_size", self.personal_size, "an integer >= 1")
        for suite in self.suites:
            one_of("eval.suites", suite, EVAL_SUITES)
        require(len(set(self.suites)) == len(self.suites), "eval.suites", self.suites, "each suite at most once")
        require(
            "multiple_choice" not in self.suites or self.multiple_choice.path is not None,
            "eval.multiple_choice.path",
            None,
            "a questions file, dataset directory or hub name when eval.suites has multiple_choice",
        )
        require(
            "lm_eval" not in self.suites or self.lm_eval.tasks,
            "eval.lm_eval.tasks",
            [],
            "a non-empty list of lm-evaluation-harness task names when eval.suites has lm_eval",
        )
