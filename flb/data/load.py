"""Load any data source and normalise it to one of trl's formats.

Sources: 'flb-tasks' (our generated JSONL), a .json/.jsonl/.csv/.parquet file, a local dataset
directory (saved with `save_to_disk` or holding data files), or a hub name.
Formats in: alpaca (instruction/input/output), messages, prompt/completion, text.
Format out, one per data set:
- {"prompt": [user msg], "completion": [assistant msg]} (completion-only loss), or
- {"messages": [...]} when the conversation does not end with an assistant turn, or
- {"text": str};
other columns (such as a task label) are kept.
"""
from __future__ import annotations

import random
from pathlib import Path

from flb.errors import DataError

DEFAULT_TASKS_PATH = Path(__file__).resolve().parents[2] / "examples" / "datasets" / "flb_tasks.jsonl"
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_records(dataset_name: str) -> list[dict]:
    """Raw records from any source, as a list of dicts."""
    if dataset_name == "flb-tasks":
        return _load_with_datasets("json", data_files=str(DEFAULT_TASKS_PATH))
    path = Path(dataset_name)
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"dataset_name: {dataset_name!r} has suffix {path.suffix!r}; use one of "
                            f"{', '.join(_FILE_BUILDERS)} or a dataset directory")
        return _load_with_datasets(builder, data_files=str(path))
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            return _load_from_disk(path)
        return _load_with_datasets(str(path))
    if path.suffix.lower() in _FILE_BUILDERS or dataset_name.startswith((".", "/")):
        raise DataError(f"dataset_name: file {dataset_name!r} not found; check the path or use 'flb-tasks'")
    return _load_from_hub(dataset_name)


def _load_with_datasets(builder: str, **kwargs) -> list[dict]:
    import datasets

    dataset = datasets.load_dataset(builder, split="train", **kwargs)
    return dataset.to_list()


def _load_from_disk(path: Path) -> list[dict]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(f"dataset_name: {str(path)!r} has splits {list(loaded)} but no 'train'; save a train split")
        loaded = loaded["train"]
    return loaded.to_list()


def _load_from_hub(name: str) -> list[dict]:
    try:
        return _load_with_datasets(name)
    except Exception as exc:  # datasets raises many types for "no network" / "no such dataset"
        raise DataError(f"dataset_name: {name!r} is not a local file or directory and could not be loaded from "
                        f"the hub ({type(exc).__name__}); offline, give a local .jsonl/.csv/.parquet path") from None


def normalize(records: list[dict]) -> list[dict]:
    """Convert every record to the format detected from the first one; keep extra columns."""
    if not records:
        raise DataError("dataset_name: the data set is empty; give a source with at least one record")
    convert = _converter_for(records[0])
    return [convert(record) for record in records]


def _converter_for(first: dict):
    if "instruction" in first and "output" in first:
        return _from_alpaca
    if "messages" in first:
        return _from_messages
    if "prompt" in first and "completion" in first:
        return _from_prompt_completion
    if "text" in first:
        return lambda record: dict(record)
    raise DataError(f"dataset_name: unrecognised columns {sorted(first)}; give alpaca (instruction/input/output), "
                    "messages, prompt/completion or text records")


def _from_alpaca(record: dict) -> dict:
    extra = {k: v for k, v in record.items() if k not in ("instruction", "input", "output")}
    prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    return {**extra, **_chat(prompt, str(record["output"]))}


def _from_prompt_completion(record: dict) -> dict:
    extra = {k: v for k, v in record.items() if k not in ("prompt", "completion")}
    prompt, completion = record["prompt"], record["completion"]
    if isinstance(prompt, list):  # already conversational
        return {**extra, "prompt": prompt, "completion": completion}
    return {**extra, **_chat(str(prompt), str(completion))}


def _from_messages(record: dict) -> dict:
    messages = record["messages"]
    extra = {k: v for k, v in record.items() if k != "messages"}
    if messages and messages[-1].get("role") == "assistant":
        return {**extra, "prompt": messages[:-1], "completion": messages[-1:]}
    return {**extra, "messages": messages}


def _chat(prompt: str, answer: str) -> dict:
    return {"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": answer}]}


def split_train_eval(records: list[dict], eval_size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out `eval_size` records chosen by `seed`; the rest is for training, order kept."""
    if eval_size >= len(records):
        raise DataError(f"eval.size: {eval_size} leaves no training data out of {len(records)} records; "
                        f"use a value below {len(records)}")
    held_out = set(random.Random(seed).sample(range(len(records)), eval_size))
    train = [r for i, r in enumerate(records) if i not in held_out]
    evaluation = [r for i, r in enumerate(records) if i in held_out]
    return train, evaluation
