"""Load any data source and normalise it to one of trl's formats.

Sources: 'flb-tasks' (our generated JSONL), 'flb-preferences' (preference pairs generated from the same task
families), a .json/.jsonl/.csv/.parquet file, a local dataset
directory (saved with `save_to_disk`, or holding such files, at its top or in data/: the ones named
train* when there are any), or a hub name.
CSV and JSON files are read as written, with no column type guessed from the data: every CSV value
is text and a JSON number keeps its digits ("2" stays "2", never "2.0").
Formats in, one per data set: alpaca (instruction/input/output), messages, prompt/completion, text.
Format out:
- {"prompt": [user msg], "completion": [assistant msg]} (completion-only loss), or
- {"messages": [...]} unless every conversation ends with an assistant turn after another turn, or
- {"text": str};
other columns (such as a task label) are kept as text, "" where a record has no value.
Preference data (client.objective dpo; normalize_preferences): prompt, chosen and rejected, each text or a list of
chat messages, out as {"prompt": [messages], "chosen": [assistant msg...], "rejected": [...]}.
Errors name rows counted from 1 in file order (a CSV's header is not a row).
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
from pathlib import Path

from flb.errors import DataError, first_line, shown

DEFAULT_TASKS_PATH = Path(__file__).resolve().parents[2] / "examples" / "datasets" / "flb_tasks.jsonl"

# format: the columns that identify it, which every record of that format needs
_FORMATS = {
    "alpaca": ("instruction", "output"),
    "messages": ("messages",),
    "prompt/completion": ("prompt", "completion"),
    "text": ("text",),
}
_OWN_COLUMNS = {
    "preference": ("prompt", "chosen", "rejected"),
    "alpaca": ("instruction", "input", "output"),
    "messages": ("messages",),
    "prompt/completion": ("prompt", "completion"),
    "text": ("text",),
}
# columns trl reads itself: never kept as extras, or trl would take a record for another format
_TRL_COLUMNS = ("prompt", "completion", "messages", "text")
_KNOWN_FORMATS = "give alpaca (instruction/input/output), messages, prompt/completion or text records"


PREFERENCES_SOURCE = "flb-preferences"


def load_records(dataset_name: str) -> list:
    """Raw records from any source, as a list (of dicts, unless the file is wrong: `normalize` checks)."""
    if dataset_name == "flb-tasks":
        return _read_file(DEFAULT_TASKS_PATH)
    if dataset_name == PREFERENCES_SOURCE:
        from flb.data.tasks import DEFAULT_NUM_EXAMPLES, DEFAULT_SEED, generate_preferences

        return generate_preferences(DEFAULT_NUM_EXAMPLES, DEFAULT_SEED)
    path = Path(dataset_name).expanduser()
    if path.is_file():
        return _read_file(path)
    if path.is_dir():
        return _read_dir(path)
    if path.suffix.lower() in _READERS or dataset_name.startswith((".", "/", "~")):
        raise DataError(f"dataset_name: file {dataset_name!r} not found; check the path or use 'flb-tasks'")
    return _load_from_hub(dataset_name)


def _read_file(path: Path) -> list:
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            f"dataset_name: {str(path)!r} has suffix {path.suffix!r}; use one of "
            f"{', '.join(_READERS)} or a dataset directory"
        )
    records = reader(path)
    if not records:
        raise DataError(
            f"dataset_name: {str(path)!r} holds no records; add at least one (a CSV needs a header "
            "line and at least one row)"
        )
    return records


def _read_dir(path: Path) -> list:
    if (path / "dataset_info.json").exists() or (path / "state.json").exists():
        return _load_from_disk(path)
    found = sorted(p for p in [*path.glob("*"), *path.glob("data/*")] if p.suffix.lower() in _READERS and p.is_file())
    files = [p for p in found if p.name.lower().startswith("train")] or found
    if not files:
        raise DataError(
            f"dataset_name: directory {str(path)!r} is not a dataset (no save_to_disk files, no "
            f"{'/'.join(_READERS)} files); point it at a data file or a dataset directory"
        )
    return [record for file in files for record in _read_file(file)]


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(
            f"dataset_name: cannot read {str(path)!r} ({exc.strerror or first_line(exc)}); check "
            "the path and its permissions"
        ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"dataset_name: {str(path)!r} is not UTF-8 text (byte {data[exc.start]:#04x} on line {line}); "
            "save it as UTF-8"
        ) from None


def _read_jsonl(path: Path) -> list:
    return _json_lines(_read_text(path), path)


def _read_json(path: Path) -> list:
    """A JSON array of records, or (as many .json files are) JSON Lines."""
    text = _read_text(path)
    if text.lstrip().startswith("["):
        return _parse_json(text, path, first_line_number=1)
    return _json_lines(text, path)


def _json_lines(text: str, path: Path) -> list:
    lines = enumerate(text.split("\n"), 1)  # not splitlines(): JSON text may hold U+2028 and other separators
    return [_parse_json(line, path, first_line_number=number) for number, line in lines if line.strip()]


MAX_JSON_DEPTH = 500  # deeper input is refused before the C parser, which can overflow the C stack first


def _parse_json(text: str, path: Path, *, first_line_number: int):
    """Numbers and NaN/Infinity stay as the text they were written as."""
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _json_depth(text) > MAX_JSON_DEPTH:
        raise DataError(
            f"dataset_name: {str(path)!r} line {first_line_number} nests too deeply to read; flatten that record"
        )
    try:
        return json.loads(text, parse_int=str, parse_float=str, parse_constant=str)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"dataset_name: {str(path)!r} line {first_line_number + exc.lineno - 1} is not valid JSON "
            f"({exc.msg} at column {exc.colno}); fix or remove it"
        ) from None
    except RecursionError:
        raise DataError(
            f"dataset_name: {str(path)!r} line {first_line_number} nests too deeply to read; flatten that record"
        ) from None


def _json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON text (brackets inside strings do not count)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped, in_string = (not escaped and char == "\\"), in_string and (escaped or char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _read_csv(path: Path) -> list[dict]:
    """Every value is the text of its cell; a cell missing from a short row is None."""
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    try:
        records = list(reader)
    except csv.Error as exc:
        line = reader.reader.line_num  # DictReader's own line_num lags behind on an error
        raise DataError(
            f"dataset_name: {str(path)!r} line {line} is not valid CSV ({first_line(exc)}); fix that line"
        ) from None
    header = reader.fieldnames or []
    for number, name in enumerate(header, 1):
        if not name or header.index(name) != number - 1:
            raise DataError(
                f"dataset_name: {str(path)!r} header column {number} is {name!r}, "
                f"{'a duplicate' if name else 'empty'}; give every column its own name"
            )
    for row, record in enumerate(records, 1):
        if None in record:
            raise DataError(
                f"dataset_name: {str(path)!r} row {row} has more values than the header's {len(header)} "
                "columns; quote values that hold commas"
            )
    return records


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow
    import pyarrow.parquet

    try:
        return pyarrow.parquet.read_table(path).to_pylist()
    except (pyarrow.ArrowException, OSError, ValueError) as exc:
        raise DataError(
            f"dataset_name: {str(path)!r} is not a readable Parquet file ({first_line(exc)}); write it again"
        ) from None


_READERS = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}


def _load_from_disk(path: Path) -> list[dict]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as exc:  # FileNotFoundError for a half-saved folder, ArrowInvalid for a corrupt one
        raise DataError(
            f"dataset_name: {str(path)!r} is not a readable save_to_disk dataset ({first_line(exc)}); save it again"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(f"dataset_name: {str(path)!r} has splits {list(loaded)} but no 'train'; save a train split")
        loaded = loaded["train"]
    return loaded.to_list()


def _load_from_hub(name: str) -> list[dict]:
    import datasets

    try:
        return datasets.load_dataset(name, split="train").to_list()
    except Exception as exc:  # datasets raises many types for "no network" / "no such dataset"
        raise DataError(
            f"dataset_name: {name!r} is not a local file or directory and could not be loaded from "
            f"the hub ({type(exc).__name__}); offline, give a local .jsonl/.csv/.parquet path"
        ) from None


def normalize(records: list) -> list[dict]:
    """Every record in the format of the first, converted; extra columns kept as text.

    A record of another format, or without a value in a column its format needs, is a DataError naming
    its row and column.
    """
    if not records:
        raise DataError("dataset_name: the data set is empty; give a source with at least one record")
    kind = _format_of(records[0], 1)
    if kind is None:
        if all(column in records[0] for column in PREFERENCE_COLUMNS):
            raise DataError(
                "dataset_name: row 1 is a preference pair (prompt/chosen/rejected); set client.objective=dpo"
            )
        raise DataError(f"dataset_name: unrecognised columns {list(records[0])} in row 1; {_KNOWN_FORMATS}")
    for row, record in enumerate(records[1:], 2):
        _check_format(record, row, kind)
    extras = _extra_columns(records, kind)
    convert = _CONVERTERS[kind]
    converted = [
        {**{name: _extra_text(record.get(name), row, name) for name in extras}, **convert(record, row)}
        for row, record in enumerate(records, 1)
    ]
    return _split_answers(converted) if kind == "messages" else converted


def _format_of(record, row: int) -> str | None:
    if not isinstance(record, dict):
        raise DataError(f"dataset_name: row {row} is {shown(record)}, not an object of named columns; {_KNOWN_FORMATS}")
    return next((kind for kind, columns in _FORMATS.items() if all(c in record for c in columns)), None)


def _check_format(record, row: int, kind: str) -> None:
    found = _format_of(record, row)
    if found == kind or (found is None and any(c in record for c in _FORMATS[kind])):
        return  # the same format, or it lacks one of its columns, which its converter reports
    what = f"is a {found} record" if found else f"has columns {list(record)}, none of {'/'.join(_FORMATS[kind])},"
    raise DataError(f"dataset_name: row {row} {what} but row 1 is {kind}; give every record the same format")


def _extra_columns(records: list[dict], kind: str) -> list[str]:
    columns = {}  # a dict keeps first-seen order and finds names in constant time
    for row, record in enumerate(records, 1):
        for name in record:
            if name not in columns and name not in _OWN_COLUMNS[kind] and name not in _TRL_COLUMNS:
                _unicode(str(name), f"row {row} column name {name!r}")
                columns[name] = None
    return list(columns)


def _from_alpaca(record: dict, row: int) -> dict:
    instruction = _text(record.get("instruction"), row, "instruction")
    extra_input = _text(record.get("input"), row, "input", required=False)
    prompt = instruction + (f"\n\n{extra_input}" if extra_input else "")
    return _chat(prompt, _text(record.get("output"), row, "output"))


def _from_prompt_completion(record: dict, row: int) -> dict:
    prompt, completion = record.get("prompt"), record.get("completion")
    if isinstance(prompt, list) or isinstance(completion, list):  # already conversational
        return {"prompt": _messages(prompt, row, "prompt"), "completion": _messages(completion, row, "completion")}
    return _chat(_text(prompt, row, "prompt"), _text(completion, row, "completion"))


def _from_messages(record: dict, row: int) -> dict:
    return {"messages": _messages(record.get("messages"), row, "messages")}


def _split_answers(records: list[dict]) -> list[dict]:
    """Chats as prompt/completion (completion-only loss) when every one ends with an assistant turn that follows
    another turn; otherwise all stay messages: one shape per data set (trl takes its columns from the first record,
    and refuses an empty prompt)."""
    if not all(len(r["messages"]) > 1 and r["messages"][-1]["role"] == "assistant" for r in records):
        return records
    return [
        {
            **{k: v for k, v in r.items() if k != "messages"},
            "prompt": r["messages"][:-1],
            "completion": r["messages"][-1:],
        }
        for r in records
    ]


def _from_text(record: dict, row: int) -> dict:
    return {"text": _text(record.get("text"), row, "text")}


_CONVERTERS = {
    "alpaca": _from_alpaca,
    "messages": _from_messages,
    "prompt/completion": _from_prompt_completion,
    "text": _from_text,
}


def _chat(prompt: str, answer: str) -> dict:
    return {"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": answer}]}


def _messages(value, row: int, column: str) -> list[dict]:
    """A conversation: a non-empty list of {role, content} with text values (other message keys are dropped)."""
    if not isinstance(value, list) or not value:
        raise DataError(
            f"dataset_name: row {row} column {column!r} must be a non-empty list of {{role, content}} "
            f"messages, not {shown(value)}"
        )
    return [_message(message, row, column, number) for number, message in enumerate(value, 1)]


def _message(message, row: int, column: str, number: int) -> dict:
    where = f"row {row} column {column!r} message {number}"
    if not (
        isinstance(message, dict)
        and isinstance(message.get("role"), str)
        and message["role"]
        and isinstance(message.get("content"), str)
    ):
        raise DataError(f'dataset_name: {where} must be {{"role": text, "content": text}}, not {shown(message)}')
    return {"role": _unicode(message["role"], where), "content": _unicode(message["content"], where)}


def _text(value, row: int, column: str, *, required: bool = True) -> str:
    """A cell as text: missing (absent, null, empty, a NaN from a float column) is an error when required, else ""."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        if required:
            raise DataError(f"dataset_name: row {row} has no value in column {column!r}; fill it in or remove the row")
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):  # typed columns of Parquet and hub data sets
        return str(value)
    if not isinstance(value, str):
        raise DataError(f"dataset_name: row {row} column {column!r} holds {shown(value)}, not text; give a string")
    return _unicode(value, f"row {row} column {column!r}")


def _extra_text(value, row: int, column: str) -> str:
    """Extra columns may hold anything; nested values are kept as their JSON text."""
    if isinstance(value, (list, dict)):
        value = json.dumps(value, ensure_ascii=False, default=str)
    elif not isinstance(value, (str, int, float, bool, type(None))):
        value = str(value)
    return _text(value, row, column, required=False)


def _unicode(text: str, where: str) -> str:
    """The tokenizer cannot take a lone surrogate (JSON "\\ud800"): refuse it here, not mid-training."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(
            f"dataset_name: {where} holds a lone surrogate escape such as \\ud800, which is not "
            "Unicode text; fix that value"
        ) from None
    return text


PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")


def normalize_preferences(records: list) -> list[dict]:
    """Preference pairs for client.objective dpo: every record needs prompt, chosen and rejected (text, or lists of
    chat messages), converted to chat messages; other columns kept as text. A missing column or value, or a pair
    whose chosen and rejected answers are the same, is a DataError naming its row."""
    if not records:
        raise DataError("dataset_name: the data set is empty; give a source with at least one record")
    for row, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise DataError(f"dataset_name: row {row} is {shown(record)}, not an object of named columns")
        missing = [column for column in PREFERENCE_COLUMNS if column not in record]
        if missing:
            raise DataError(
                f"dataset_name: row {row} has no {missing[0]!r} column (columns: {list(record)}); client.objective "
                "dpo needs prompt, chosen and rejected in every record: add it, or set client.objective=sft"
            )
    extras = _extra_columns(records, "preference")
    converted = []
    for row, record in enumerate(records, 1):
        pair = {
            "prompt": _turns(record["prompt"], row, "prompt", "user"),
            "chosen": _turns(record["chosen"], row, "chosen", "assistant"),
            "rejected": _turns(record["rejected"], row, "rejected", "assistant"),
        }
        if pair["chosen"] == pair["rejected"]:
            raise DataError(
                f"dataset_name: row {row} has the same chosen and rejected answer, which teaches no preference; "
                "fix or remove the row"
            )
        converted.append({**{name: _extra_text(record.get(name), row, name) for name in extras}, **pair})
    return converted


def _turns(value, row: int, column: str, role: str) -> list[dict]:
    """A preference column as chat messages: a list as given, text as one message of `role`."""
    if isinstance(value, list):
        return _messages(value, row, column)
    return [{"role": role, "content": _text(value, row, column)}]


def split_train_eval(records: list[dict], eval_size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out `eval_size` records chosen by `seed`; the rest is for training, order kept."""
    if eval_size >= len(records):
        raise DataError(
            f"eval.size: {eval_size} leaves no training data out of {len(records)} records; "
            f"use a value below {len(records)}"
        )
    held_out = set(random.Random(seed).sample(range(len(records)), eval_size))
    train = [r for i, r in enumerate(records) if i not in held_out]
    evaluation = [r for i, r in enumerate(records) if i in held_out]
    return train, evaluation
