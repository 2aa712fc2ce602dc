"""What every section is made of: a field with its help text, and the value rules several sections share."""

from __future__ import annotations

from dataclasses import field
from typing import Any

from flb.errors import require


def described(text: str, **kwargs):
    """A dataclass field whose help text the docs' configuration reference and `--help` show."""
    return field(metadata={"help": text}, **kwargs)


def one_of(key: str, value: Any, options: tuple) -> None:
    require(value in options, key, value, " | ".join("null" if o is None else str(o) for o in options))


def probability(key: str, value: float) -> None:
    require(0 < value < 1, key, value, "a number in (0, 1)")


def optional_limit(key: str, value: int | None) -> None:
    require(value is None or value >= 1, key, value, "an integer >= 1, or null for all")
