"""Python function-writing tasks with reference solutions, generated here (our own content; nothing from HumanEval).

    python -m bench.code_tasks [--count 1200] [--seed 0] [--out code_tasks.jsonl] [--check]

Each task is a small function (filters, counts, string edits, running totals...) with randomised names,
constants and docstring examples. The examples come from an oracle written apart from the reference solution (a
plain Python function), so `check_program` tests the reference against it; --check runs every family's check in
the sandbox. Records are prompt/completion text, in two styles: "complete this function" shown as HumanEval
problems are shown to the model (server.suites.humaneval.request) and "write a function that ...", both answered
with the whole function in a Python code block; `task` names the family. Tasks that are HumanEval problems under
another name (gcd, primality, palindromes, Fibonacci, prefix filters) are left out on purpose, and no function
is named like a HumanEval entry point, so that training does not rehearse the test.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class CodeTask:
    family: str
    name: str
    params: str  # "numbers: List[int], k: int"
    returns: str
    description: str  # one sentence, starting with a verb
    body: str  # indented, ends without a newline
    oracle: Callable
    inputs: list[tuple]
    imports: str = ""
    examples: int = field(default=2)

    @property
    def signature(self) -> str:
        return f"def {self.name}({self.params}) -> {self.returns}:"

    def call(self, args: tuple) -> str:
        return f"{self.name}({', '.join(repr(a) for a in args)})"

    def stub(self) -> str:
        """Imports, signature and docstring with examples, as a HumanEval prompt is written."""
        shown = "".join(
            f"    >>> {self.call(args)}\n    {self.oracle(*args)!r}\n" for args in self.inputs[: self.examples]
        )
        head = f"{self.imports}\n\n\n" if self.imports else ""
        return f'{head}{self.signature}\n    """ {self.description}\n{shown}    """\n'

    def solution(self) -> str:
        return f"{self.stub()}{self.body}\n"

    def check_program(self) -> str:
        """The reference solution against the oracle's answers on every input."""
        checks = "".join(
            f"assert {self.call(args)} == {self.oracle(*args)!r}, {self.call(args)!r}\n" for args in self.inputs
        )
        return f"{self.solution()}\n\n{checks}"


def _numbers(rng: random.Random, low: int = -9, high: int = 20) -> list[int]:
    return [rng.randint(low, high) for _ in range(rng.randint(3, 7))]


def _words(rng: random.Random) -> str:
    vocabulary = [
        "apple",
        "river",
        "stone",
        "cloud",
        "green",
        "level",
        "noon",
        "tiger",
        "lamp",
        "orbit",
        "delta",
        "kayak",
        "paper",
        "radar",
        "sun",
        "moon",
        "book",
        "tree",
    ]
    return " ".join(rng.choice(vocabulary) for _ in range(rng.randint(2, 6)))


def _pick(rng: random.Random, *options):
    return rng.choice(options)


def sum_filtered(rng):
    kind, test, check = _pick(
        rng,
        ("even", "x % 2 == 0", lambda x: x % 2 == 0),
        ("odd", "x % 2 != 0", lambda x: x % 2 == 1),
        ("positive", "x > 0", lambda x: x > 0),
        ("negative", "x < 0", lambda x: x < 0),
    )
    arg = _pick(rng, "numbers", "values", "items")
    inputs = [(_numbers(rng),) for _ in range(4)] + [([],)]
    return CodeTask(
        "sum_filtered",
        _pick(rng, f"sum_{kind}", f"total_{kind}", f"add_{kind}_numbers"),
        f"{arg}: List[int]",
        "int",
        f"Return the sum of the {kind} numbers in {arg}.",
        f"    total = 0\n    for x in {arg}:\n        if {test}:\n            total += x\n    return total",
        lambda xs: sum(filter(check, xs)),
        inputs,
        imports="from typing import List",
    )


def count_chars(rng):
    kind, test, check = _pick(
        rng,
        ("vowels", "char.lower() in 'aeiou'", lambda c: c.lower() in "aeiou"),
        ("digits", "char.isdigit()", str.isdigit),
        ("uppercase letters", "char.isupper()", str.isupper),
        ("spaces", "char == ' '", lambda c: c == " "),
    )
    arg = _pick(rng, "text", "s", "sentence")
    samples = ["Hello World 42", "OpenAI", "a1 b2 C3", "", "Python 3.12 Is Fun", "NO vowels? yes"]
    inputs = [(s,) for s in rng.sample(samples, 4)]
    return CodeTask(
        "count_chars",
        f"count_{kind.replace(' ', '_')}",
        f"{arg}: str",
        "int",
        f"Count how many {kind} there are in {arg}.",
        f"    return sum(1 for char in {arg} if {test})",
        lambda s: len([c for c in s if check(c)]),
        inputs,
    )


def reverse_words(rng):
    arg = _pick(rng, "sentence", "text", "words")
    inputs = [(_words(rng),) for _ in range(3)] + [("",)]
    return CodeTask(
        "reverse_words",
        _pick(rng, "reverse_words", "words_backwards", "flip_word_order"),
        f"{arg}: str",
        "str",
        f"Return {arg} with the order of its space-separated words reversed.",
        f"    return ' '.join(reversed({arg}.split()))",
        lambda s: " ".join(s.split()[::-1]),
        inputs,
    )


def largest_or_default(rng):
    default = rng.choice([0, -1, None])
    arg = _pick(rng, "numbers", "values")
    inputs = [(_numbers(rng),) for _ in range(3)] + [([],)]
    return CodeTask(
        "largest_or_default",
        _pick(rng, "largest", "max_or_default", "biggest"),
        f"{arg}: List[int]",
        "Optional[int]",
        f"Return the largest number in {arg}, or {default!r} if it is empty.",
        f"    if not {arg}:\n        return {default!r}\n    best = {arg}[0]\n    for x in {arg}[1:]:\n"
        f"        if x > best:\n            best = x\n    return best",
        lambda xs: sorted(xs)[-1] if xs else default,
        inputs,
        imports="from typing import List, Optional",
    )


def filter_by_ending(rng):
    piece = rng.choice(["a", "st", "s", "on", "t"])
    pool = ["apple", "arena", "rest", "reason", "stone", "gas", "melon", "cotton", "treat", "seat", "on", "oak"]
    inputs = [(rng.sample(pool, rng.randint(3, 6)), piece) for _ in range(3)] + [([], piece)]
    return CodeTask(
        "filter_by_ending",
        _pick(rng, "ending_with", "keep_endings"),
        "strings: List[str], ending: str",
        "List[str]",
        "Return the strings that end with ending, in their original order.",
        "    return [s for s in strings if s.endswith(ending)]",
        lambda ws, e: [w for w in ws if w[len(w) - len(e) :] == e],
        inputs,
        imports="from typing import List",
    )


def factorial(rng):
    inputs = [(n,) for n in rng.sample(range(0, 11), 4)]

    def oracle(n):
        return 1 if n == 0 else n * oracle(n - 1)

    return CodeTask(
        "factorial",
        _pick(rng, "factorial", "product_up_to"),
        "n: int",
        "int",
        "Return the product of the integers from 1 to n (1 when n is 0).",
        "    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result",
        oracle,
        inputs,
    )


def word_frequency(rng):
    inputs = [(_words(rng),) for _ in range(3)]

    def oracle(text):
        words = text.split()
        return {w: words.count(w) for w in words}

    return CodeTask(
        "word_frequency",
        _pick(rng, "word_counts", "count_words"),
        "text: str",
        "Dict[str, int]",
        "Return a dict mapping each space-separated word of text to the number of times it occurs.",
        "    counts = {}\n    for word in text.split():\n        counts[word] = counts.get(word, 0) + 1\n"
        "    return counts",
        oracle,
        inputs,
        imports="from typing import Dict",
        examples=1,
    )


def running_sum(rng):
    inputs = [(_numbers(rng),) for _ in range(3)] + [([],)]
    return CodeTask(
        "running_sum",
        _pick(rng, "running_sum", "cumulative_totals", "prefix_sums"),
        "numbers: List[int]",
        "List[int]",
        "Return the running totals of numbers: element i is the sum of numbers[0] to numbers[i].",
        "    totals = []\n    total = 0\n    for x in numbers:\n        total += x\n        totals.append(total)\n"
        "    return totals",
        lambda xs: [sum(xs[: i + 1]) for i in range(len(xs))],
        inputs,
        imports="from typing import List",
    )


def differences(rng):
    inputs = [(_numbers(rng),) for _ in range(3)] + [([5],)]
    return CodeTask(
        "differences",
        _pick(rng, "differences", "consecutive_differences", "steps"),
        "numbers: List[int]",
        "List[int]",
        "Return the differences between consecutive numbers (each number minus the one before it).",
        "    return [b - a for a, b in zip(numbers, numbers[1:])]",
        lambda xs: [xs[i] - xs[i - 1] for i in range(1, len(xs))],
        inputs,
        imports="from typing import List",
    )


def remove_char(rng):
    char = rng.choice("aeost ")
    inputs = [(_words(rng),) for _ in range(3)] + [("",)]
    return CodeTask(
        "remove_char",
        _pick(rng, "remove_char", "strip_all", "without_char"),
        "text: str",
        "str",
        f"Return text with every {char!r} removed.",
        f"    return ''.join(c for c in text if c != {char!r})",
        lambda s: s.replace(char, ""),
        inputs,
    )


def clamp_all(rng):
    low, high = sorted(rng.sample(range(-5, 15), 2))
    inputs = [(_numbers(rng),) for _ in range(3)]
    return CodeTask(
        "clamp",
        _pick(rng, "clamp_all", "limit_values"),
        "numbers: List[int]",
        "List[int]",
        f"Return numbers with each value clamped to the range [{low}, {high}].",
        f"    result = []\n    for x in numbers:\n        if x < {low}:\n            x = {low}\n"
        f"        elif x > {high}:\n            x = {high}\n        result.append(x)\n    return result",
        lambda xs: [min(max(x, low), high) for x in xs],
        inputs,
        imports="from typing import List",
    )


def second_largest(rng):
    inputs = [(_numbers(rng, 0, 9),) for _ in range(3)] + [([4, 4],)]

    def oracle(xs):
        distinct = sorted(set(xs))
        return distinct[-2] if len(distinct) > 1 else None

    return CodeTask(
        "second_largest",
        _pick(rng, "second_largest", "runner_up"),
        "numbers: List[int]",
        "Optional[int]",
        "Return the second largest distinct value in numbers, or None if there is no such value.",
        "    distinct = sorted(set(numbers), reverse=True)\n    if len(distinct) < 2:\n        return None\n"
        "    return distinct[1]",
        oracle,
        inputs,
        imports="from typing import List, Optional",
    )


def unique_in_order(rng):
    inputs = [(_numbers(rng, 0, 5),) for _ in range(3)] + [([],)]
    return CodeTask(
        "first_occurrences",
        _pick(rng, "first_occurrences", "dedupe", "drop_repeats"),
        "numbers: List[int]",
        "List[int]",
        "Return the numbers without repeats, each kept where it first appears.",
        "    seen = set()\n    result = []\n    for x in numbers:\n        if x not in seen:\n"
        "            seen.add(x)\n            result.append(x)\n    return result",
        lambda xs: list(dict.fromkeys(xs)),
        inputs,
        imports="from typing import List",
    )


def spread(rng):
    inputs = [(_numbers(rng),) for _ in range(4)]
    return CodeTask(
        "spread",
        _pick(rng, "spread", "value_range", "max_minus_min"),
        "numbers: List[int]",
        "int",
        "Return the difference between the largest and the smallest of the non-empty list numbers.",
        "    return max(numbers) - min(numbers)",
        lambda xs: sorted(xs)[-1] - sorted(xs)[0],
        inputs,
        imports="from typing import List",
    )


def every_other(rng):
    start = rng.choice([0, 1])
    inputs = [(_numbers(rng),) for _ in range(3)] + [([],)]
    where = "even" if start == 0 else "odd"
    return CodeTask(
        "every_other",
        f"at_{where}_positions",
        "items: List[int]",
        "List[int]",
        f"Return the items at {where} positions (index {start}, {start + 2}, {start + 4}, ...).",
        f"    return items[{start}::2]",
        lambda xs: [x for i, x in enumerate(xs) if i % 2 == start],
        inputs,
        imports="from typing import List",
    )


def to_fahrenheit(rng):
    inputs = [([rng.choice([-40, -10, 0, 5, 20, 35, 100]) for _ in range(rng.randint(1, 4))],) for _ in range(3)]
    return CodeTask(
        "to_fahrenheit",
        _pick(rng, "to_fahrenheit", "celsius_to_fahrenheit"),
        "celsius: List[float]",
        "List[float]",
        "Convert each temperature from degrees Celsius to degrees Fahrenheit (F = C * 9 / 5 + 32).",
        "    return [c * 9 / 5 + 32 for c in celsius]",
        lambda cs: [32 + c * 18 / 10 for c in cs],
        inputs,
        imports="from typing import List",
    )


def long_words(rng):
    inputs = [(_words(rng), rng.randint(2, 5)) for _ in range(4)]
    return CodeTask(
        "long_words",
        _pick(rng, "count_long_words", "words_longer_than"),
        "text: str, n: int",
        "int",
        "Return how many space-separated words of text have more than n letters.",
        "    count = 0\n    for word in text.split():\n        if len(word) > n:\n            count += 1\n"
        "    return count",
        lambda t, n: sum(len(w) > n for w in t.split()),
        inputs,
    )


def digit_sum(rng):
    inputs = [(rng.randint(0, 99999),) for _ in range(4)]
    return CodeTask(
        "digit_sum",
        _pick(rng, "digit_sum", "sum_of_digits"),
        "n: int",
        "int",
        "Return the sum of the decimal digits of the non-negative integer n.",
        "    total = 0\n    while n > 0:\n        total += n % 10\n        n //= 10\n    return total",
        lambda n: sum(map(int, str(n))),
        inputs,
    )


def count_above(rng):
    inputs = [(_numbers(rng), rng.randint(0, 10)) for _ in range(4)]
    return CodeTask(
        "count_above",
        _pick(rng, "count_above", "how_many_greater"),
        "numbers: List[int], k: int",
        "int",
        "Return how many numbers are strictly greater than k.",
        "    return len([x for x in numbers if x > k])",
        lambda xs, k: sum(x > k for x in xs),
        inputs,
        imports="from typing import List",
    )


FAMILIES = (
    sum_filtered,
    count_chars,
    reverse_words,
    largest_or_default,
    filter_by_ending,
    factorial,
    word_frequency,
    running_sum,
    differences,
    remove_char,
    clamp_all,
    second_largest,
    unique_in_order,
    spread,
    every_other,
    to_fahrenheit,
    long_words,
    digit_sum,
    count_above,
)


def generate(count: int, seed: int = 0) -> list[CodeTask]:
    rng = random.Random(seed)
    return [FAMILIES[i % len(FAMILIES)](rng) for i in range(count)]


def record(task: CodeTask, rng: random.Random) -> dict:
    """One prompt/completion record; half ask to complete a stub, half describe the function in words."""
    from server.suites.humaneval import request

    answer = f"```python\n{task.solution().rstrip()}\n```"
    if rng.random() < 0.5:
        return {"task": task.family, "prompt": request(task.stub()), "completion": answer}
    prompt = f"Write a Python function `{task.signature[4:-1]}`. {task.description}"
    return {"task": task.family, "prompt": prompt, "completion": answer}


def records(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed + 1)
    return [record(task, rng) for task in generate(count, seed)]


def write_jsonl(path: Path, count: int, seed: int = 0) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records(count, seed)))
    return path


def check_families(seed: int = 0) -> dict[str, str]:
    """Each family's reference solution against its oracle, in the sandbox: {family: outcome} (all 'passed')."""
    from server.suites import sandbox

    tasks = generate(len(FAMILIES), seed)
    outcomes = sandbox.run_programs([t.check_program() for t in tasks], timeout_s=10, memory_mb=512)
    return {t.family: f"{o.status} {o.detail}".strip() for t, o in zip(tasks, outcomes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("code_tasks.jsonl"))
    parser.add_argument("--check", action="store_true", help="run every family's check in the sandbox")
    args = parser.parse_args()
    if args.check:
        for family, outcome in check_families(args.seed).items():
            print(f"{family:<20} {outcome}")
    print(write_jsonl(args.out, args.count, args.seed))


if __name__ == "__main__":
    main()
