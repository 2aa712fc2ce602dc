"""Property-based: whatever config files, --set strings and data files a user writes, the loaders return a valid
result or raise an FLBError whose message is one line; never another exception."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import typing

import yaml
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from flb.config import Config, config_from_dict, load_config
from flb.data.load import load_records, normalize
from flb.errors import FLBError

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def dotted_keys(cls=Config, prefix="") -> list[str]:
    """Every key of the config, sections included (model, model.lora, model.lora.r, ...)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        keys.append(prefix + field.name)
        if dataclasses.is_dataclass(hints[field.name]):
            keys += dotted_keys(hints[field.name], f"{prefix}{field.name}.")
    return keys


REAL_KEYS = dotted_keys()
YAML_SNIPPETS = [
    "4",
    "-1",
    "0",
    "null",
    "~",
    "true",
    "yes",
    "1e-3",
    "1.0e-3",
    ".nan",
    "-.inf",
    "1e400",
    "9" * 40,
    "[q_proj, v_proj]",
    "[]",
    "{}",
    "{max_steps: 3}",
    "{optim: sgd}",
    "{bf16: true, fp16: true}",
    "{1: 2}",
    "2001-13-01",
    "2001-01-01",
    "!!set {a}",
    "&a [*a]",
    "!!binary aGk=",
    "!!timestamp x",
    "'\\ud800'",
    '"\\ud800"',
    "a\nb",
    "[[[[[[",
    "{a: [1, {b: c}]}",
    "\x00",
    "é ü 中文",
    "0x10",
    "1_000",
    "9" * 400,
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
# values a user might mean: these reach the checks behind the type checks, and make valid configs
plausible = st.one_of(
    st.integers(min_value=-2, max_value=8),
    st.floats(min_value=-0.5, max_value=2.0),
    st.booleans(),
    st.none(),
    st.sampled_from(
        [
            "iid",
            "dirichlet",
            "column",
            "fedavg",
            "dp_fixed_clipping",
            "dp_adaptive_clipping",
            "update",
            "dpsgd",
            "replace",
            "cpu",
            "auto",
            "bfloat16",
            "embedded",
            "rpc",
            "quality",
            "task",
            "runs",
        ]
    ),
)
known_keys = st.sampled_from(REAL_KEYS)
keys = st.one_of(
    known_keys,
    known_keys,
    known_keys,
    st.text(max_size=12),
    st.builds(lambda a, b: f"{a}.{b}", known_keys, st.text(max_size=6)),
)
any_value = st.one_of(plausible, plausible, values, st.sampled_from(YAML_SNIPPETS))


def outcome(call):
    """The call's result, or the FLBError it raised (checked to be one line); anything else fails the test."""
    try:
        result = call()
    except FLBError as exc:
        assert str(exc) and "\n" not in str(exc), repr(str(exc))
        count(f"refused: {type(exc).__name__}")
        return exc
    count("accepted")
    return result


def count(label: str) -> None:
    """pytest --hypothesis-show-statistics shows how often each outcome was explored."""
    if currently_in_test_context():
        event(label)


def check_config(result) -> None:
    """An accepted config can be written to config.json and read back (what --resume does)."""
    if isinstance(result, Config):
        assert config_from_dict(json.loads(json.dumps(result.to_dict(), sort_keys=True))) == result


def nested(pairs: list[tuple[str, object]]) -> dict:
    data = {}
    for key, value in pairs:
        node = data
        *sections, leaf = key.split(".")
        for section in sections:
            node = node.setdefault(section, {}) if isinstance(node.get(section, {}), dict) else {}
        node[leaf] = value
    return data


@FUZZ
@given(pairs=st.lists(st.tuples(keys, any_value), max_size=3))
def test_config_files_of_random_keys_and_values(tmp_path, pairs):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(nested(pairs), allow_unicode=True), encoding="utf-8")
    check_config(outcome(lambda: load_config(path)))


@FUZZ
@given(
    content=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        st.lists(st.sampled_from(YAML_SNIPPETS + [f"{k}: " for k in REAL_KEYS] + ["  ", "- ", ": "]), max_size=12).map(
            lambda parts: "\n".join(parts).encode()
        ),
        st.sampled_from(YAML_SNIPPETS).map(lambda s: f"seed: {s}\n".encode("latin-1", "replace")),
    )
)
def test_config_files_of_random_bytes(tmp_path, content):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    check_config(outcome(lambda: load_config(path)))


@FUZZ
@given(
    overrides=st.lists(
        st.one_of(
            st.builds(lambda k, v: f"{k}={v}", keys, st.one_of(st.sampled_from(YAML_SNIPPETS), st.text(max_size=16))),
            st.builds(lambda k, v: f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}", keys, any_value),
            st.text(max_size=20),
        ),
        max_size=3,
    )
)
def test_set_overrides(overrides):
    check_config(outcome(lambda: load_config(None, overrides)))


def test_every_key_with_every_awkward_value(tmp_path):
    """Not random: each config key set to each snippet, over the defaults (about 2,000 loads)."""
    defaults = tmp_path / "empty.yaml"
    defaults.write_text("")
    for key in REAL_KEYS:
        for snippet in YAML_SNIPPETS:
            override = f"{key}={snippet}"
            check_config(outcome(lambda override=override: load_config(defaults, [override])))


# data: records of one format, some with fields missing, null, of the wrong type, or of another format
texts = st.text(max_size=10) | st.sampled_from(["", "2", "2.0", "None", "\ud800", "a,b", 'q"uote', "line\nbreak"])
good = st.text(min_size=1, max_size=10)
cell = st.one_of(good, good, good, good, good, good, texts, scalars)
chat = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]), "content": st.text(max_size=8)}),
    min_size=1,
    max_size=3,
)
odd_chat = st.lists(
    st.one_of(st.dictionaries(st.sampled_from(["role", "content", "name"]), cell, max_size=3), scalars), max_size=3
)
extras = {"task": cell, "input": cell}
FORMATS = [
    st.fixed_dictionaries({"instruction": cell, "output": cell}, optional=extras),
    st.fixed_dictionaries({"messages": st.one_of(chat, chat, chat, chat, odd_chat, cell)}, optional=extras),
    st.fixed_dictionaries({"prompt": st.one_of(cell, chat), "completion": st.one_of(cell, chat)}, optional=extras),
    st.fixed_dictionaries({"text": cell}, optional=extras),
]
odd_record = st.one_of(st.dictionaries(st.text(max_size=5), cell, max_size=3), scalars, st.lists(scalars, max_size=2))
records = st.sampled_from(FORMATS).flatmap(
    lambda usual: st.lists(st.one_of(*[usual] * 8, st.one_of(FORMATS), odd_record), max_size=5)
)


def as_jsonl(rows: list) -> bytes:
    return "\n".join(json.dumps(row) for row in rows).encode()  # json.dumps escapes "\ud800": it reaches the loader


def as_csv(rows: list) -> bytes:
    header = list(dict.fromkeys(k for row in rows if isinstance(row, dict) for k in row))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for row in rows:
        values = [row.get(k) for k in header] if isinstance(row, dict) else [row]
        writer.writerow(["" if v is None else str(v) for v in values])
    return out.getvalue().encode("utf-8", "surrogatepass")


def check_records(result) -> None:
    """Accepted data is one trl format, every extra column text, and datasets takes it as it is."""
    if isinstance(result, FLBError):
        return
    from datasets import Dataset

    shapes = {frozenset(k for k in r if k in ("prompt", "completion", "messages", "text")) for r in result}
    assert len(shapes) == 1 and next(iter(shapes)) in ({"prompt", "completion"}, {"messages"}, {"text"})
    for record in result:
        for key, value in record.items():
            if key in ("prompt", "completion", "messages"):
                assert value and all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in value)
            else:
                assert isinstance(value, str)
    assert Dataset.from_list(result).to_list() == result
    json.dumps(result, ensure_ascii=False).encode()  # what the shard digest hashes


@FUZZ
@given(
    rows=records,
    suffix=st.sampled_from(["jsonl", "json", "csv"]),
    encoding=st.sampled_from(["utf-8", "latin-1", "utf-16", "garbled"]),
)
def test_data_files(tmp_path, rows, suffix, encoding):
    content = {"jsonl": as_jsonl, "json": lambda r: json.dumps(r).encode(), "csv": as_csv}[suffix](rows)
    if encoding == "garbled":
        content = content[: len(content) // 2] + b"\xff\xfe" + content[len(content) // 2 :]
    elif encoding != "utf-8":
        content = content.decode("utf-8", "surrogatepass").encode(encoding, "replace")
    path = tmp_path / f"data.{suffix}"
    path.write_bytes(content)
    check_records(outcome(lambda: normalize(load_records(str(path)))))


@FUZZ
@given(content=st.binary(max_size=300), suffix=st.sampled_from(["jsonl", "json", "csv"]))
def test_data_files_of_random_bytes(tmp_path, content, suffix):
    path = tmp_path / f"data.{suffix}"
    path.write_bytes(content)
    check_records(outcome(lambda: normalize(load_records(str(path)))))


@FUZZ
@given(rows=records)
def test_in_memory_records(rows):
    check_records(outcome(lambda: normalize(rows)))


@FUZZ
@given(chats=st.lists(st.one_of(chat, chat, chat, odd_chat), min_size=1, max_size=5))
def test_chats(chats):
    check_records(outcome(lambda: normalize([{"messages": messages} for messages in chats])))
