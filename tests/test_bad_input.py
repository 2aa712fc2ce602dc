"""Careless and malformed input through the real entry point: exit status 2, one `error: ` line on stderr naming
the file or key, and no run directory. Every case fails before training starts."""

from __future__ import annotations

import shutil

import pytest

import assembly
import main_simple_fl
from flb.config import load_config
from flb.run.directory import RunDir


@pytest.fixture(autouse=True)
def no_loading_bars():
    """transformers draws its "Loading weights" bar on stderr when a model loads; the line checked is FLB's."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    yield
    transformers_logging.enable_progress_bar()


HALF = object()  # a file cut to half its size


def write(path, content: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def prepare(tmp_path, tiny_model_dir, files: dict) -> None:
    """Write `files` under tmp_path; model/<name> edits a copy of the tiny model: None deletes, HALF truncates."""
    if any(name.startswith("model/") for name in files):
        shutil.copytree(tiny_model_dir, tmp_path / "model")
    for name, content in files.items():
        path = tmp_path / name
        if content is None:
            path.unlink()
        elif content is HALF:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        else:
            write(path, content)


MIXED = '{"instruction": "q", "output": "a"}\n{"messages": [{"role": "user", "content": "q"}]}\n'
# id: (files under tmp_path, --set overrides ({tmp} is tmp_path), what the one error line holds)
CASES = {
    "seed_negative": ({}, ["seed=-1"], "error: seed: invalid value -1; allowed: an integer in [0, 2**32)"),
    "output_dir_is_a_file": ({"runs": "a file"}, [], "error: output_dir: '{tmp}/runs' is a file, not a folder"),
    "unknown_training_argument": (
        {},
        ["sft.training_arguments={warmup_ratioo: 0.1}"],
        "error: sft.training_arguments.warmup_ratioo: SFTConfig has no such argument",
    ),
    "training_argument_flb_sets": (
        {},
        ["sft.training_arguments={max_steps: 100}"],
        "error: sft.training_arguments.max_steps: FLB sets it; set local_steps instead",
    ),
    "training_argument_refused": (
        {},
        ["sft.training_arguments={optim: fastest}"],
        "error: sft.training_arguments.optim: SFTConfig refuses 'fastest'",
    ),
    "csv_gap_in_answer": (
        {"d.csv": "instruction,input,output\nq,,1\nr,,\n"},
        ["dataset_name={tmp}/d.csv"],
        "error: dataset_name: row 2 has no value in column 'output'",
    ),
    "empty_jsonl": ({"d.jsonl": ""}, ["dataset_name={tmp}/d.jsonl"], "d.jsonl' holds no records"),
    "header_only_csv": ({"d.csv": "instruction,output\n"}, ["dataset_name={tmp}/d.csv"], "d.csv' holds no records"),
    "latin1_jsonl": (
        {"d.jsonl": b'{"text": "caf\xe9"}\n'},
        ["dataset_name={tmp}/d.jsonl"],
        "d.jsonl' is not UTF-8 text (byte 0xe9 on line 1)",
    ),
    "mixed_formats": (
        {"d.jsonl": MIXED},
        ["dataset_name={tmp}/d.jsonl"],
        "row 2 is a messages record but row 1 is alpaca",
    ),
    "csv_without_instruction": (
        {"d.csv": "input,output\na,b\n"},
        ["dataset_name={tmp}/d.csv"],
        "unrecognised columns ['input', 'output'] in row 1",
    ),
    "directory_not_a_dataset": (
        {"notes/readme.txt": "hello"},
        ["dataset_name={tmp}/notes"],
        "directory '{tmp}/notes' is not a dataset",
    ),
    "messages_not_a_list": (
        {"d.jsonl": '{"messages": "hi"}'},
        ["dataset_name={tmp}/d.jsonl"],
        "row 1 column 'messages' must be a non-empty list of {role, content} messages",
    ),
    "model_dir_without_config": (
        {"model/config.json": None},
        ["model.model_path={tmp}/model"],
        "'{tmp}/model' has no config.json, so it is not a Hugging Face model folder",
    ),
    "model_truncated_safetensors": (
        {"model/model.safetensors": HALF},
        ["model.model_path={tmp}/model"],
        "the model in '{tmp}/model' cannot be loaded (Error while deserializing header",
    ),
    "model_without_tokenizer": (
        {"model/tokenizer.json": None, "model/tokenizer_config.json": None},
        ["model.model_path={tmp}/model"],
        "error: model.model_path: the tokenizer in",
    ),
    "garbage_gguf": (
        {"m.gguf": b"GGUF" + bytes(40)},
        ["model.model_path={tmp}/m.gguf"],
        "the tokenizer in '{tmp}/m.gguf' cannot be loaded",
    ),
    "target_modules_missing": (
        {},
        ["model.target_modules=[no_such_proj]"],
        "error: model.target_modules: ['no_such_proj']",
    ),
    "target_modules_partly_missing": (
        {},
        ["model.target_modules=[q_proj,x_proj]"],
        "error: model.target_modules: ['x_proj'] match no module of this llama model; "
        "its linear layers: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj",
    ),
    "questions_file_missing": (
        {},
        ["eval.suites=[multiple_choice]", "eval.multiple_choice.path={tmp}/none.jsonl"],
        "error: eval.multiple_choice.path:",
    ),
    "questions_without_answers": (
        {"q.jsonl": '{"question": "q", "choices": ["a", "b"]}\n'},
        ["eval.suites=[multiple_choice]", "eval.multiple_choice.path={tmp}/q.jsonl"],
        "error: eval.multiple_choice.path:",
    ),
    "lm_eval_not_installed": (
        {},
        ["eval.suites=[lm_eval]", "eval.lm_eval.tasks=[arc_easy]"],
        "error: eval.lm_eval: lm-evaluation-harness is not installed",
    ),
    "device_without_a_gpu": (
        {},
        ["model.device_map=cuda", "sft.training_arguments={bf16: true}"],
        "error: model.device_map: 'cuda' was asked for but no CUDA device is available",
    ),
}


def run_main(argv, capsys) -> tuple[int, list[str]]:
    code = main_simple_fl.main(argv)
    return code, capsys.readouterr().err.splitlines()


def set_args(overrides: list[str]) -> list[str]:
    return [arg for override in overrides for arg in ("--set", override)]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_error_line_and_no_run_directory(
    case, tiny_overrides, tiny_model_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("FLB_CACHE_DIR", str(tmp_path / "cache"))
    files, overrides, fragment = CASES[case]
    prepare(tmp_path, tiny_model_dir, files)
    code, err = run_main(set_args(tiny_overrides + [o.replace("{tmp}", str(tmp_path)) for o in overrides]), capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and fragment.replace("{tmp}", str(tmp_path)) in err[0], err
    runs = tmp_path / "runs"
    assert not runs.is_dir() or not any(runs.iterdir())


def test_non_utf8_config_file(tmp_path, capsys):
    config = write(tmp_path / "my.yaml", "num_rounds: 2\nseed: 4\xb2\n".encode("latin-1"))
    code, err = run_main(["--config", config], capsys)
    assert (code, err) == (
        2,
        [f"error: --config: {config!r} is not UTF-8 text (byte 0xb2 on line 2); save it as UTF-8"],
    )


def test_unreachable_privacy_target_leaves_no_run_directory(tiny_overrides, tmp_path, capsys):
    code, err = run_main(set_args(tiny_overrides + ["client.local_dp=true", "client.dp.target_epsilon=1e-9"]), capsys)
    assert code == 2 and len(err) == 1 and "client.dp.target_epsilon" in err[0]
    assert not (tmp_path / "runs").exists()


def test_a_keystore_that_does_not_open_leaves_no_run_directory(tiny_overrides, tmp_path, capsys, monkeypatch):
    from chain.accounts import create_keystore

    keys = tmp_path / "keys"
    create_keystore(keys / "admin.json", "right", iterations=2**10)
    monkeypatch.setenv("FLB_TEST_PASSWORD", "wrong")
    rpc = [
        "chain_record=true",
        "chain.backend=rpc",
        "chain.rpc_url=https://user:secret@rpc.invalid",
        "chain.chain_id=1",
        f"chain.keystore_dir={keys}",
        "chain.password_env=FLB_TEST_PASSWORD",
    ]
    code, err = run_main(set_args(tiny_overrides + rpc), capsys)
    assert (code, err) == (2, [f"error: keystore {keys / 'admin.json'}: cannot decrypt; check the password variable"])
    assert not (tmp_path / "runs").exists()


def test_a_node_that_does_not_answer_is_one_redacted_line_and_no_run_directory(
    tiny_overrides, tmp_path, capsys, monkeypatch
):
    from chain.accounts import create_keystore

    keys = tmp_path / "keys"
    for name in ("admin", "client_0", "client_1"):
        create_keystore(keys / f"{name}.json", "right", iterations=2**10)
    monkeypatch.setenv("FLB_TEST_PASSWORD", "right")
    rpc = [
        "chain_record=true",
        "chain.backend=rpc",
        "chain.rpc_url=http://user:secret@127.0.0.1:9",
        "chain.chain_id=1",
        f"chain.keystore_dir={keys}",
        "chain.password_env=FLB_TEST_PASSWORD",
    ]
    code, err = run_main(set_args(tiny_overrides + rpc), capsys)
    assert code == 2 and len(err) == 1 and "does not answer" in err[0]
    assert "secret" not in err[0] and "http://***@127.0.0.1:9" in err[0]
    assert not (tmp_path / "runs").exists()


def damaged_run(tiny_overrides, tmp_path, name: str, content: str) -> RunDir:
    run = RunDir.create(tmp_path / "runs", load_config(None, tiny_overrides).to_dict())
    (run.path / name).write_text(content)
    return run


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("checkpoint.json", "", "checkpoint.json' is not valid JSON"),
        ("checkpoint.json", '{"round": 1}', "checkpoint.json' has no valid 'global_digest'"),
        ("config.json", '{"model": ', "config.json' is not valid JSON"),
    ],
)
def test_resume_of_a_damaged_run_is_one_error_line(tiny_overrides, tmp_path, capsys, name, content, fragment):
    run = damaged_run(tiny_overrides, tmp_path, name, content)
    before = sorted(p.name for p in (tmp_path / "runs").iterdir())
    code, err = run_main(["--resume", str(run.path)], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert "start a new run" in err[0]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == before


@pytest.mark.parametrize(
    "override, message",
    [
        ("execution.mode=batched", "^execution.mode: batched does not apply to a Flower run"),
        ("mode=split", "^mode: split does not run on Flower's deployment engine; use split.channel grpc"),
    ],
)
def test_a_flower_run_refuses_another_execution_mode_before_anything_exists(
    tiny_overrides, tmp_path, override, message
):
    """Each SuperNode trains its own whole client: batched or processes would be silently ignored there, and split
    mode needs its own channel."""
    from flb.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        assembly.run(load_config(None, tiny_overrides + [override]), fleet=object())
    assert not (tmp_path / "runs").exists()
