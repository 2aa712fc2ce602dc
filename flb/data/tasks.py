"""Our own instruction tasks with exact, checkable answers, deterministic by seed.

`python -m flb.data.tasks --out examples/datasets/flb_tasks.jsonl` writes the default data set.
Each record: {"task": family, "prompt": str, "completion": str}. generate_preferences makes preference pairs of the
same families for client.objective dpo: {"task", "prompt", "chosen": the correct answer, "rejected": a plausible
wrong one}.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

_WORDS = (
    "apple",
    "river",
    "stone",
    "cloud",
    "tiger",
    "lemon",
    "piano",
    "forest",
    "candle",
    "rocket",
    "garden",
    "silver",
    "window",
    "planet",
    "bridge",
    "pepper",
    "castle",
    "orange",
    "shadow",
    "marble",
)
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_NAMES = ("Ada", "Boris", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana", "Ines", "Jonas")
_CITIES = ("Lyon", "Porto", "Graz", "Turku", "Bergen", "Ghent", "Cork", "Brno", "Split", "Malmo")


def arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice("+-*")
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return f"Compute {a} {op} {b}. Answer with the number only.", str(value)


def unit_conversion(rng: random.Random) -> tuple[str, str]:
    unit, factor, target = rng.choice(
        [
            ("kilometers", 1000, "meters"),
            ("meters", 100, "centimeters"),
            ("kilograms", 1000, "grams"),
            ("hours", 60, "minutes"),
            ("minutes", 60, "seconds"),
        ]
    )
    amount = rng.randint(2, 40)
    return f"Convert {amount} {unit} to {target}. Answer with the number only.", str(amount * factor)


def string_edit(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(_WORDS)
    edit = rng.choice(["reverse", "uppercase", "first_last"])
    if edit == "reverse":
        return f"Write the word '{word}' backwards. Answer with the word only.", word[::-1]
    if edit == "uppercase":
        return f"Write the word '{word}' in capital letters. Answer with the word only.", word.upper()
    return f"Give the first and last letter of '{word}'. Answer with the two letters only.", word[0] + word[-1]


def list_sorting(rng: random.Random) -> tuple[str, str]:
    numbers = rng.sample(range(1, 100), rng.randint(3, 5))
    descending = rng.random() < 0.5
    order = "descending" if descending else "ascending"
    shown = ", ".join(map(str, numbers))
    return (
        f"Sort these numbers in {order} order: {shown}. Answer with the numbers separated by commas.",
        ", ".join(map(str, sorted(numbers, reverse=descending))),
    )


def date_formatting(rng: random.Random) -> tuple[str, str]:
    year, month, day = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
    return (
        f"Write the date {_MONTHS[month - 1]} {day}, {year} in ISO format (YYYY-MM-DD). Answer with the date only.",
        f"{year:04d}-{month:02d}-{day:02d}",
    )


def json_extraction(rng: random.Random) -> tuple[str, str]:
    record = {"name": rng.choice(_NAMES), "age": rng.randint(18, 90), "city": rng.choice(_CITIES)}
    key = rng.choice(list(record))
    return (
        f'Given the JSON {json.dumps(record)}, what is the value of "{key}"? Answer with the value only.',
        str(record[key]),
    )


TASK_FAMILIES: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "arithmetic": arithmetic,
    "unit_conversion": unit_conversion,
    "string_edit": string_edit,
    "list_sorting": list_sorting,
    "date_formatting": date_formatting,
    "json_extraction": json_extraction,
}


def generate_tasks(num_examples: int, seed: int) -> list[dict]:
    """`num_examples` records cycling through the families, each drawn from an RNG seeded by `seed`."""
    rng = random.Random(seed)
    families = list(TASK_FAMILIES.items())
    records = []
    for index in range(num_examples):
        family, make = families[index % len(families)]
        prompt, completion = make(rng)
        records.append({"task": family, "prompt": prompt, "completion": completion})
    return records


def _near_number(answer: str, rng: random.Random) -> str:
    """Off by a slip: one to ten away, never the answer."""
    return str(int(answer) + rng.choice((-10, -2, -1, 1, 2, 10)))


def _wrong_string_edit(prompt: str, answer: str, rng: random.Random) -> str:
    if "backwards" in prompt:
        return answer[::-1]  # the word as given
    if "capital" in prompt:
        return answer.capitalize()
    return answer[0] + answer[0] if answer[1] != answer[0] else answer[0] + "x"  # the first letter twice


def _wrong_sorting(prompt: str, answer: str, rng: random.Random) -> str:
    return ", ".join(reversed(answer.split(", ")))  # the other order


def _wrong_date(prompt: str, answer: str, rng: random.Random) -> str:
    year, month, day = answer.split("-")
    if day != month and int(day) <= 12:
        return f"{year}-{day}-{month}"  # day and month swapped
    return f"{year}-{month}-{int(day) % 28 + 1:02d}"  # the next day


def _wrong_json_value(prompt: str, answer: str, rng: random.Random) -> str:
    record = json.loads(prompt.removeprefix("Given the JSON ").split(", what is")[0])
    return rng.choice([str(value) for value in record.values() if str(value) != answer])  # another key's value


# family -> a plausible wrong answer to (prompt, answer)
WRONG_ANSWERS: dict[str, Callable[[str, str, random.Random], str]] = {
    "arithmetic": lambda prompt, answer, rng: _near_number(answer, rng),
    "unit_conversion": lambda prompt, answer, rng: str(int(answer) // 10),  # a factor of ten too small
    "string_edit": _wrong_string_edit,
    "list_sorting": _wrong_sorting,
    "date_formatting": _wrong_date,
    "json_extraction": _wrong_json_value,
}


def generate_preferences(num_examples: int, seed: int) -> list[dict]:
    """generate_tasks' records as preference pairs: chosen the correct answer, rejected a plausible wrong one."""
    rng = random.Random(seed + 1)  # the wrong answers' own draws: the tasks stay those of generate_tasks
    return [
        {
            "task": record["task"],
            "prompt": record["prompt"],
            "chosen": record["completion"],
            "rejected": WRONG_ANSWERS[record["task"]](record["prompt"], record["completion"], rng),
        }
        for record in generate_tasks(num_examples, seed)
    ]


def write_jsonl(records: list[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


DEFAULT_NUM_EXAMPLES = 1200
DEFAULT_SEED = 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate FLB's instruction tasks as JSONL.")
    parser.add_argument("--out", required=True, help="output .jsonl path")
    parser.add_argument("--num-examples", type=int, default=DEFAULT_NUM_EXAMPLES)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    write_jsonl(generate_tasks(args.num_examples, args.seed), args.out)
    print(f"wrote {args.num_examples} examples to {args.out}")


if __name__ == "__main__":
    main()
