"""From YAML and `--set a.b=value` overrides to a validated Config."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from flb.config.root import Config
from flb.config.strategies import STRATEGIES
from flb.errors import ConfigError, invalid_value, require, shown

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "config.yaml"


def load_config(path: str | Path | None = None, overrides: list[str] = (), use_server_dp: bool | None = None) -> Config:
    """Read YAML (config.yaml by default), apply `a.b=value` overrides, build and validate."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {str(path)!r} must hold a mapping of keys, not {type(data).__name__}")
    for item in overrides:
        apply_override(data, item)
    if use_server_dp is not None:
        _apply_use_server_dp(data, use_server_dp)
    return build(Config, data)


# PyYAML raises more than YAMLError on bad input: ValueError for `2001-13-01`, RecursionError for deep
# nesting, AttributeError for `!!timestamp x`.
_YAML_FAILURES = (yaml.YAMLError, ValueError, RecursionError, AttributeError)


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"--config: file {str(path)!r} not found; pass an existing YAML file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {str(path)!r} ({exc.strerror}); check its permissions") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"--config: {str(path)!r} is not UTF-8 text (byte {data[exc.start]:#04x} on line {line}); save it as UTF-8"
        ) from None
    try:
        return yaml.safe_load(text) or {}
    except _YAML_FAILURES as exc:
        raise ConfigError(f"--config: {str(path)!r} is not valid YAML ({_first_line(exc)}); fix the syntax") from None


def _apply_use_server_dp(data: dict, use_server_dp: bool) -> None:
    """FLB's flag: true selects DP-FedAvg with fixed clipping; false means no server-side DP at all."""
    strategy = data.setdefault("strategy", {})
    if not isinstance(strategy, dict):
        raise ConfigError(f"strategy: expected a mapping of keys, got {shown(strategy)}")
    name = strategy.get("name")
    if use_server_dp:
        strategy["name"] = "dp_fixed_clipping"
    elif isinstance(name, str) and name in STRATEGIES and STRATEGIES[name].dp:
        strategy["name"] = strategy.get("wraps", "fedavg")


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config from its resolved dictionary (as written into a run directory)."""
    return build(Config, data)


def apply_override(data: dict, item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (so 4, null, [q_proj] work)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set: {item!r} is not KEY=VALUE; write e.g. --set num_rounds=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except _YAML_FAILURES:
        value = raw
    node = data
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set: {key!r} has an empty part between dots; write e.g. --set model.lora.r=4")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set: {key!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def build(cls, data: Any, prefix: str = ""):
    """Build dataclass `cls` from a mapping, rejecting unknown keys and values of the wrong type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {shown(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            # a mapping given under a misspelt name was meant for a section (modle.lora.r: model, not mode)
            sections = [name for name, f in fields.items() if dataclasses.is_dataclass(f.default_factory)]
            close = difflib.get_close_matches(str(key), sections if isinstance(data[key], dict) else fields, n=1)
            hint = f"did you mean {prefix}{close[0]!r}?" if close else f"valid keys: {', '.join(fields)}"
            raise ConfigError(f"{prefix}{_key_text(key)}: unknown key; {hint}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], data[name], prefix + name) for name in fields if name in data}
    return cls(**kwargs)


def _key_text(key: Any) -> str:
    """A key as typed, or its repr when it is not plain text (a YAML key may be a number or hold a newline)."""
    return key if isinstance(key, str) and key.isprintable() and key.strip() == key != "" else shown(key)


_KIND_NAMES = {str: "a string", list: "a list of strings"}


def _coerce(kind, value, key: str):
    if dataclasses.is_dataclass(kind):
        return build(kind, value if value is not None else {}, key + ".")
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(kind)):  # Optional[...]
            return None
        if len(options) == 1:
            return _coerce(options[0], value, key)
        # str | list[str]: the option of the value's own kind
        chosen = [o for o in options if isinstance(value, typing.get_origin(o) or o)]
        require(bool(chosen), key, value, " or ".join(_KIND_NAMES[typing.get_origin(o) or o] for o in options))
        return _coerce(chosen[0], value, key)
    if kind is bool:
        require(isinstance(value, bool), key, value, "true | false")
        return value
    if kind is int:
        require(isinstance(value, int) and not isinstance(value, bool), key, value, "an integer")
        require(-(2**63) <= value < 2**63, key, value, "an integer that fits in 64 bits")
        return value
    if kind is float:
        number = _to_float(value)
        require(number is not None and math.isfinite(number), key, value, "a finite number")
        return number
    if kind is str:
        require(
            isinstance(value, str) and value != "" and "\0" not in value,
            key,
            value,
            "a non-empty string without NUL characters",
        )
        return value
    if origin is list and typing.get_args(kind) == (float,):
        numbers = [_to_float(v) for v in value] if isinstance(value, list) else [None]
        require(all(n is not None and math.isfinite(n) for n in numbers), key, value, "a list of finite numbers")
        return numbers
    if origin is list and typing.get_args(kind) == (int,):
        require(
            isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value),
            key,
            value,
            "a list of integers",
        )
        return list(value)
    if origin is list:
        require(isinstance(value, list) and all(isinstance(v, str) for v in value), key, value, "a list of strings")
        return list(value)
    if kind is dict or origin is dict:
        require(isinstance(value, dict), key, value, "a mapping")
        return dict(value)
    raise TypeError(f"unsupported config type {kind} for {key}")


def _to_float(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return float(value)  # YAML 1.1 reads "1e-3" as a string
    except (ValueError, OverflowError):  # OverflowError: an integer beyond any float, 10**400
        return None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def parse_bool(name: str, raw: str) -> bool:
    """A real boolean for flags like --use_server_dp=false (FLB parsed any string as true)."""
    lowered = raw.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise invalid_value(name, raw, "true | false")
