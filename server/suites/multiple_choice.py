"""MMLU-style multiple choice: zero-shot, greedy, the first standalone choice letter of the answer is the choice.

Questions come from eval.multiple_choice.path: a .jsonl/.json/.parquet file, a dataset directory (saved with
`save_to_disk`, or holding such files) or a hub name (`datasets.load_dataset(name, split=split)`). Each question
has `question`, its choices as a list `choices` or as columns A, B, C, D (as many letters as it has choices),
`answer` as a letter or a 0-based index, and optionally `subject`. Metrics: accuracy overall and per subject,
and how many answers held no choice letter at all (they count as wrong).
"""

from __future__ import annotations

import json
import re
import string
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from flb.config import MultipleChoiceSettings
from flb.errors import DataError, first_line, shown
from flb.model.generation import chat_text, greedy_continuations

KEY = "eval.multiple_choice.path"
FIELDS_HINT = "give question, choices (a list, or columns A, B, C, D) and answer (a letter or a 0-based index)"
ANSWER_TOKENS = 8  # room for "The answer is B." and no more
NO_SUBJECT = "unspecified"
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, ...]
    answer: int  # index into choices
    subject: str

    @property
    def letters(self) -> str:
        return string.ascii_uppercase[: len(self.choices)]


class MultipleChoiceSuite:
    name = "multiple_choice"

    def __init__(self, settings: MultipleChoiceSettings, *, batch_size: int):
        self.questions = load_questions(settings.path, settings.split)[: settings.limit]
        self.batch_size = batch_size

    def __call__(self, model, tokenizer) -> dict:
        texts = [chat_text(tokenizer, prompt(q)) for q in self.questions]
        replies = greedy_continuations(
            model,
            tokenizer,
            texts,
            max_new_tokens=ANSWER_TOKENS,
            batch_size=self.batch_size,
            label="eval multiple_choice",
        )
        return score(self.questions, replies)


def prompt(question: Question) -> str:
    topic = f" about {question.subject.replace('_', ' ')}" if question.subject != NO_SUBJECT else ""
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(question.letters, question.choices))
    return (
        f"The following is a multiple choice question{topic}. Reply with the letter of the correct answer "
        f"({', '.join(question.letters)}) only.\n\n{question.question}\n{options}\nAnswer:"
    )


def chosen_letter(reply: str, letters: str) -> str | None:
    """The first of `letters` standing alone in `reply` ("B", "B.", "(B)", "answer is B"), or None."""
    found = re.search(rf"\b([{letters}])\b", reply)
    return found.group(1) if found else None


def score(questions: list[Question], replies: list[str]) -> dict:
    correct, total = defaultdict(int), defaultdict(int)
    unanswered = 0
    for question, reply in zip(questions, replies, strict=True):
        letter = chosen_letter(reply, question.letters)
        unanswered += letter is None
        total[question.subject] += 1
        correct[question.subject] += letter == question.letters[question.answer]
    count = sum(total.values())
    return {
        "accuracy": sum(correct.values()) / count if count else 0.0,
        "correct": sum(correct.values()),
        "total": count,
        "unanswered": unanswered,
        "accuracy_by_subject": {s: correct[s] / total[s] for s in sorted(total)},
    }


def load_questions(path: str, split: str) -> list[Question]:
    rows = _read_rows(path, split)
    if not rows:
        raise DataError(f"{KEY}: {path!r} holds no questions; {FIELDS_HINT}")
    return [_question(row, number, path) for number, row in enumerate(rows, 1)]


def _read_rows(path: str, split: str) -> list:
    local = Path(path).expanduser()
    if local.is_file():
        return _read_file(local)
    if local.is_dir():
        return _read_dir(local, split)
    if local.suffix.lower() in _FILE_SUFFIXES or path.startswith((".", "/", "~")):
        raise DataError(f"{KEY}: file {path!r} not found; check the path")
    return _load_from_hub(path, split)


def _read_file(path: Path) -> list:
    suffix = path.suffix.lower()
    if suffix not in _FILE_SUFFIXES:
        raise DataError(
            f"{KEY}: {str(path)!r} has suffix {suffix!r}; use a {'/'.join(_FILE_SUFFIXES)} file or a dataset directory"
        )
    if suffix == ".parquet":
        import pyarrow
        import pyarrow.parquet

        try:
            return pyarrow.parquet.read_table(path).to_pylist()
        except (pyarrow.ArrowException, OSError, ValueError) as exc:
            raise DataError(
                f"{KEY}: {str(path)!r} is not a readable Parquet file ({first_line(exc)}); write it again"
            ) from None
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{KEY}: cannot read {str(path)!r} as UTF-8 text ({first_line(exc)}); check the file") from None
    if suffix == ".json" and text.lstrip().startswith("["):
        return _parse_json(text, path, 1)
    return [_parse_json(line, path, number) for number, line in enumerate(text.split("\n"), 1) if line.strip()]


def _parse_json(text: str, path: Path, line: int):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        where = line + getattr(exc, "lineno", 1) - 1
        raise DataError(
            f"{KEY}: {str(path)!r} line {where} is not valid JSON ({first_line(exc)}); fix or remove it"
        ) from None


def _read_dir(path: Path, split: str) -> list:
    if (path / "dataset_info.json").exists() or (path / "state.json").exists() or (path / "dataset_dict.json").exists():
        import datasets

        try:
            loaded = datasets.load_from_disk(str(path))
        except (OSError, ValueError) as exc:
            raise DataError(
                f"{KEY}: {str(path)!r} is not a readable save_to_disk dataset ({first_line(exc)}); save it again"
            ) from None
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(
                    f"{KEY}: {str(path)!r} has splits {sorted(loaded)} but no {split!r}; set "
                    f"eval.multiple_choice.split to one of them"
                )
            loaded = loaded[split]
        return loaded.to_list()
    found = sorted(
        p for p in [*path.glob("*"), *path.glob("data/*")] if p.suffix.lower() in _FILE_SUFFIXES and p.is_file()
    )
    files = [p for p in found if p.name.lower().startswith(split.lower())] or found
    if not files:
        raise DataError(
            f"{KEY}: directory {str(path)!r} holds no save_to_disk dataset and no "
            f"{'/'.join(_FILE_SUFFIXES)} files; point it at a questions file"
        )
    return [row for file in files for row in _read_file(file)]


def _load_from_hub(name: str, split: str) -> list:
    import datasets

    try:
        return datasets.load_dataset(name, split=split).to_list()
    except Exception as exc:  # datasets raises many types for "offline", "no such dataset", "needs a config name"
        raise DataError(
            f"{KEY}: {name!r} is not a local file or directory and could not be loaded from the hub "
            f"({type(exc).__name__}: {first_line(exc)[:120]}); offline, give a local "
            f"{'/'.join(_FILE_SUFFIXES)} file or a save_to_disk directory"
        ) from None


def _question(row, number: int, path: str) -> Question:
    where = f"{KEY}: {path!r} row {number}"
    if not isinstance(row, dict):
        raise DataError(f"{where} is {shown(row, 40)}, not a record; {FIELDS_HINT}")
    if not isinstance(row.get("question"), str) or not row["question"].strip():
        raise DataError(f"{where} has no question text; {FIELDS_HINT}")
    choices = _choices(row, where)
    return Question(
        question=row["question"].strip(),
        choices=choices,
        answer=_answer(row.get("answer"), choices, where),
        subject=str(row.get("subject") or NO_SUBJECT),
    )


def _choices(row: dict, where: str) -> tuple[str, ...]:
    if "choices" in row:
        choices = row["choices"]
        if not isinstance(choices, list) or not all(isinstance(c, (str, int, float)) for c in choices):
            raise DataError(f"{where}: choices is {shown(choices, 40)}, not a list of texts; {FIELDS_HINT}")
    else:
        choices = [row[letter] for letter in string.ascii_uppercase if letter in row]
        if [letter for letter in string.ascii_uppercase if letter in row] != list(
            string.ascii_uppercase[: len(choices)]
        ):
            raise DataError(f"{where}: choice columns must be A, B, C... without gaps; {FIELDS_HINT}")
    if not 2 <= len(choices) <= 26:
        raise DataError(f"{where} has {len(choices)} choices; give between 2 and 26")
    return tuple(str(c).strip() for c in choices)


def _answer(answer, choices: tuple[str, ...], where: str) -> int:
    letters = string.ascii_uppercase[: len(choices)]
    if isinstance(answer, str):
        text = answer.strip().upper()
        if len(text) == 1 and text in letters:
            return letters.index(text)
        answer = int(text) if text.isdigit() else answer
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        return answer
    raise DataError(
        f"{where}: answer {shown(answer, 40)} is not one of {', '.join(letters)} or an index 0 to "
        f"{len(choices) - 1}; fix it"
    )
