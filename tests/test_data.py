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


@pytest.mark.parametrize(
    "record, expected_keys",
    [
        ({"instruction": "Add", "input": "1 and 2", "output": "3"}, {"prompt", "completion"}),
        ({"prompt": "Say hi", "completion": "hi"}, {"prompt", "completion"}),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            {"prompt", "completion"},
        ),
        ({"messages": [{"role": "user", "content": "q"}]}, {"messages"}),
        ({"text": "plain text"}, {"text"}),
    ],
)
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


def write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def answers(dataset_name: str) -> list[str]:
    return [r["completion"][0]["content"] for r in normalize(load_records(dataset_name))]


def test_csv_values_keep_their_text(tmp_path):
    path = write(tmp_path, "d.csv", "instruction,input,output,task\nAdd,1 and 1,2,math\nHalve,,4.0,\nSay,x,007,t\n")
    records = normalize(load_records(path))
    assert [r["completion"][0]["content"] for r in records] == ["2", "4.0", "007"]
    assert records[1]["prompt"][0]["content"] == "Halve" and records[1]["task"] == ""


def test_json_numbers_keep_their_digits_and_null_optionals_are_empty(tmp_path):
    path = write(
        tmp_path,
        "d.jsonl",
        '{"instruction": "a", "output": 2, "input": null, "level": null}\n'
        '{"instruction": "b", "output": 2.50, "level": 3}\n'
        '{"instruction": "c", "output": true, "level": 1e3}\n',
    )
    records = normalize(load_records(path))
    assert [r["completion"][0]["content"] for r in records] == ["2", "2.50", "true"]
    assert [r["level"] for r in records] == ["", "3", "1e3"]
    assert records[0]["prompt"][0]["content"] == "a"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("gap.csv", "instruction,input,output\nq1,,a1\nq2,,\n", "row 2 has no value in column 'output'"),
        ("short.csv", "instruction,input,output\nq1,,a1\nq2\n", "row 2 has no value in column 'output'"),
        (
            "null.jsonl",
            '{"instruction": "q", "output": "a"}\n{"instruction": null, "output": "a"}\n',
            "row 2 has no value in column 'instruction'",
        ),
        (
            "absent.jsonl",
            '{"prompt": "q", "completion": "a"}\n{"prompt": "q"}\n',
            "row 2 has no value in column 'completion'",
        ),
        (
            "mixed.jsonl",
            '{"instruction": "q", "output": "a"}\n{"instruction": "q", "output": "a"}\n'
            '{"messages": [{"role": "user", "content": "q"}]}\n',
            "row 3 is a messages record but row 1 is alpaca; give every record the same format",
        ),
        ("other.jsonl", '{"text": "t"}\n{"question": "q"}\n', "row 2 has columns ['question'], none of text,"),
        ("noinstruction.csv", "input,output\nx,y\n", "unrecognised columns ['input', 'output'] in row 1"),
        ("scalars.json", "[1, 2]", "row 1 is '1', not an object of named columns"),
        ("listline.jsonl", '{"text": "a"}\n["text"]\n', "row 2 is ['text'], not an object of named columns"),
        (
            "msgstr.jsonl",
            '{"messages": "hello"}\n',
            "row 1 column 'messages' must be a non-empty list of {role, content}",
        ),
        ("msgempty.jsonl", '{"messages": []}\n', "row 1 column 'messages' must be a non-empty list"),
        (
            "msgbad.jsonl",
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]}\n',
            'row 1 column \'messages\' message 2 must be {"role": text, "content": text}',
        ),
        (
            "pcmixed.jsonl",
            '{"prompt": [{"role": "user", "content": "q"}], "completion": "a"}\n',
            "row 1 column 'completion' must be a non-empty list",
        ),
        (
            "nested.jsonl",
            '{"instruction": {"a": 1}, "output": "x"}\n',
            "row 1 column 'instruction' holds {'a': '1'}, not text",
        ),
        ("surrogate.jsonl", '{"text": "bad \\ud800"}\n', "row 1 column 'text' holds a lone surrogate escape"),
        ("empty.jsonl", "", "holds no records"),
        ("blank.jsonl", "\n\n  \n", "holds no records"),
        ("header.csv", "instruction,input,output\n", "holds no records"),
        ("empty.csv", "", "holds no records"),
        ("emptyarray.json", "[]", "holds no records"),
        ("latin1.csv", "instruction,output\ncaf\xe9,x\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9 on line 2)"),
        ("utf16.jsonl", '{"text": "a"}\n'.encode("utf-16"), "is not UTF-8 text (byte 0xff on line 1)"),
        ("latin1.json", '[{"text": "caf\xe9"}]'.encode("latin-1"), "is not UTF-8 text (byte 0xe9 on line 1)"),
        ("broken.jsonl", '{"text": "a"}\n{"text": \n', "line 2 is not valid JSON (Expecting value at column 10)"),
        ("broken.json", '[{"text": "a"},\n {"text" "b"}]', "line 2 is not valid JSON (Expecting ':' delimiter"),
        ("deep.jsonl", "[" * 100000 + "]" * 100000, "line 1 nests too deeply"),
        ("wide.csv", "instruction,output\nq,a,extra\n", "row 1 has more values than the header's 2 columns"),
        ("dupe.csv", "instruction,output,output\nq,a,b\n", "header column 3 is 'output', a duplicate"),
        ("unnamed.csv", "instruction,,output\nq,x,a\n", "header column 2 is '', empty"),
        ("huge.csv", "text\n" + "x" * 200_000 + "\n", "line 2 is not valid CSV (field larger than field limit"),
        ("data.txt", "hello", "has suffix '.txt'"),
    ],
)
def test_bad_data_is_one_line_naming_row_column_or_file(tmp_path, name, content, message):
    path = write(tmp_path, name, content)
    with pytest.raises(DataError) as info:
        normalize(load_records(path))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("dataset_name: ")


def test_json_file_may_hold_json_lines(tmp_path):
    assert answers(
        write(tmp_path, "d.json", '{"prompt": "q", "completion": "1"}\n{"prompt": "r", "completion": "2"}\n')
    ) == ["1", "2"]


def test_directory_of_data_files_loads_its_train_files(tmp_path):
    (tmp_path / "ds").mkdir()
    write(tmp_path, "ds/train.csv", "prompt,completion\nq,train\n")
    write(tmp_path, "ds/test.csv", "prompt,completion\nq,test\n")
    assert answers(str(tmp_path / "ds")) == ["train"]


@pytest.mark.parametrize("files", [[], ["notes.txt"], ["model.bin"]])
def test_directory_that_is_not_a_dataset(tmp_path, files):
    (tmp_path / "ds").mkdir()
    for name in files:
        write(tmp_path, f"ds/{name}", "hello")
    with pytest.raises(DataError, match="is not a dataset"):
        load_records(str(tmp_path / "ds"))


def test_corrupt_parquet_and_saved_dataset_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="is not a readable Parquet file"):
        load_records(write(tmp_path, "d.parquet", b"PAR1 not really"))
    (tmp_path / "saved").mkdir()
    write(tmp_path, "saved/state.json", "{broken")
    with pytest.raises(DataError, match="is not a readable save_to_disk dataset"):
        load_records(str(tmp_path / "saved"))


def test_partition_column_holding_conversations_is_refused():
    records = normalize([{"instruction": f"q{i}", "output": "a", "task": "t"} for i in range(4)])
    with pytest.raises(DataError, match="partition.column: 'prompt' holds lists or mappings, not labels"):
        partition_indices(records, 2, "dirichlet", alpha=1.0, column="prompt", seed=0)


def test_chats_take_one_shape_per_data_set():
    user, assistant = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}
    assert [set(r) for r in normalize([{"messages": [user, assistant]}] * 2)] == [{"prompt", "completion"}] * 2
    assert [set(r) for r in normalize([{"messages": [user, assistant]}, {"messages": [user]}])] == [{"messages"}] * 2
    assert normalize([{"messages": [assistant]}]) == [{"messages": [assistant]}]  # trl refuses an empty prompt
