"""Generated tasks, loading every supported format, train/eval split and partitioning."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from flb.data.load import DEFAULT_TASKS_PATH, load_records, normalize, split_train_eval
from flb.data.partition import partition_indices
from flb.data.tasks import DEFAULT_NUM_EXAMPLES, DEFAULT_SEED, TASK_FAMILIES, generate_tasks
from flb.errors import DataError


def test_generator_is_deterministic_and_matches_the_committed_file():
    assert generate_tasks(30, seed=1) == generate_tasks(30, seed=1)
    assert generate_tasks(30, seed=1) != generate_tasks(30, seed=2)
    committed = [json.loads(line) for line in DEFAULT_TASKS_PATH.read_text().splitlines()]
    assert committed == generate_tasks(DEFAULT_NUM_EXAMPLES, DEFAULT_SEED)
    assert set(Counter(r["task"] for r in committed)) == set(TASK_FAMILIES)


def test_answers_are_exact():
    by_task = {r["task"]: r for r in generate_tasks(12, seed=3)}
    arithmetic = by_task["arithmetic"]["prompt"].removeprefix("Compute ").split(".")[0]
    assert str(eval(arithmetic)) == by_task["arithmetic"]["completion"]


@pytest.mark.parametrize("record, expected_keys", [
    ({"instruction": "Add", "input": "1 and 2", "output": "3"}, {"prompt", "completion"}),
    ({"prompt": "Say hi", "completion": "hi"}, {"prompt", "completion"}),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, {"prompt", "completion"}),
    ({"messages": [{"role": "user", "content": "q"}]}, {"messages"}),
    ({"text": "plain text"}, {"text"}),
])
def test_normalize_every_format(record, expected_keys):
    (out,) = normalize([record])
    assert set(out) == expected_keys
    if "completion" in out:
        assert out["completion"][0]["role"] == "assistant"


def test_alpaca_input_joins_the_prompt():
    (out,) = normalize([{"instruction": "Add", "input": "1 and 2", "output": "3", "label": "math"}])
    assert out["prompt"][0]["content"] == "Add\n\n1 and 2" and out["label"] == "math"


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_load_local_files(tmp_path, suffix):
    import datasets

    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(5)]
    path = tmp_path / f"data.{suffix}"
    dataset = datasets.Dataset.from_list(rows)
    {"jsonl": dataset.to_json, "csv": dataset.to_csv, "parquet": dataset.to_parquet}[suffix](str(path))
    records = normalize(load_records(str(path)))
    assert [r["completion"][0]["content"] for r in records] == [f"a{i}" for i in range(5)]


def test_load_saved_dataset_dir(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"text": "hello"}, {"text": "world"}]).save_to_disk(str(tmp_path / "ds"))
    assert load_records(str(tmp_path / "ds")) == [{"text": "hello"}, {"text": "world"}]


def test_missing_file_and_unknown_format_are_clear(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_records(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="unrecognised columns"):
        normalize([{"question": "q"}])


def test_split_holds_out_exactly_eval_size():
    records = [{"i": i} for i in range(50)]
    train, evaluation = split_train_eval(records, 10, seed=0)
    assert len(evaluation) == 10 and len(train) == 40
    assert not {r["i"] for r in train} & {r["i"] for r in evaluation}
    with pytest.raises(DataError, match="eval.size"):
        split_train_eval(records, 50, seed=0)


def labelled(n_per_label=100, labels=("a", "b", "c", "d")):
    return [{"task": label} for label in labels for _ in range(n_per_label)]


def test_iid_partition_sizes():
    parts = partition_indices(labelled(), 3, "iid", alpha=1.0, column="task", seed=0)
    assert sorted(map(len, parts)) == [133, 133, 134]
    assert sorted(i for p in parts for i in p) == list(range(400))


def test_dirichlet_small_alpha_is_skewed_large_alpha_is_balanced():
    records = labelled()

    def skew(alpha):
        parts = partition_indices(records, 4, "dirichlet", alpha=alpha, column="task", seed=0)
        assert sorted(i for p in parts for i in p) == list(range(400)) and all(parts)
        # mean over clients of the share of its most common label
        return sum(Counter(records[i]["task"] for i in p).most_common(1)[0][1] / len(p) for p in parts) / 4

    assert skew(0.1) > 0.6
    assert skew(100.0) < 0.4


def test_column_partition_gives_each_value_to_one_client():
    records = labelled(10)
    parts = partition_indices(records, 2, "column", alpha=1.0, column="task", seed=0)
    assert [sorted({records[i]["task"] for i in p}) for p in parts] == [["a", "c"], ["b", "d"]]
    with pytest.raises(DataError, match="only 4 distinct values"):
        partition_indices(records, 5, "column", alpha=1.0, column="task", seed=0)
    with pytest.raises(DataError, match="partition.column"):
        partition_indices(records, 2, "dirichlet", alpha=1.0, column="label", seed=0)
