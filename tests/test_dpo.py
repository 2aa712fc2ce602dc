"""client.objective dpo: trl's DPO loss against a hand computation, federated DPO end to end, resume, bad preference
data and the refusals, each in one line."""

from __future__ import annotations

import json
import math

import pytest

import main_simple_fl
from flb.audit.digests import adapter_file_digest
from flb.config import DPOSettings, LoraSettings, ModelSettings, SFTSettings, load_config
from flb.errors import ConfigError, DataError

DPO = ["client.objective=dpo", "eval.suites=[]"]


def metrics_rows(run_path) -> list[dict]:
    rows = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "eval_loss" in row]


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_the_dpo_loss_and_gradients_are_the_hand_computed_ones(tiny_model_dir, tmp_path, loss_type):
    """On a batch of trl's own collation and an adapter away from the base: trl's loss and the LoRA gradients equal
    -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))) (ipo: the length-normalised square) computed from the
    log-probs of the policy and of the base with the adapter disabled; trl keeps no second adapter as reference."""
    import torch
    import torch.nn.functional as F

    from client.sft import ClientTrainer
    from flb.model.dpo import completion_log_probs
    from flb.model.load import adapter_parameters, add_lora, load_base_model, load_tokenizer

    settings = ModelSettings(model_path=str(tiny_model_dir), lora=LoraSettings(dropout=0.0))
    tokenizer, model = load_tokenizer(settings), add_lora(load_base_model(settings), settings)
    pairs = {0: [preference_pair(i) for i in range(4)]}
    dpo = DPOSettings(beta=0.5, loss_type=loss_type)
    trainers = ClientTrainer(
        model,
        tokenizer,
        SFTSettings(max_length=96),
        pairs,
        local_steps=1,
        work_dir=tmp_path,
        use_cpu=True,
        seed=0,
        dpo=dpo,
    )
    assert list(model.peft_config) == ["default"]
    torch.manual_seed(1)
    with torch.no_grad():  # B = 0 would make the policy the reference and leave A without a gradient
        for parameter in adapter_parameters(model).values():
            parameter.add_(0.05 * torch.randn_like(parameter))
    trainer = trainers.trainer
    trainer.train_dataset = trainers.rows_of(0, pairs[0])
    batch = next(iter(trainer.get_train_dataloader()))
    model.train()

    def hand_loss():
        policy = completion_log_probs(model, batch)
        with torch.no_grad(), model.disable_adapter():
            reference = completion_log_probs(model, batch)
        chosen, rejected = (policy - reference).chunk(2)
        if loss_type == "sigmoid":
            return -F.logsigmoid(dpo.beta * (chosen - rejected)).mean()
        lengths = batch["completion_mask"].sum(1).chunk(2)
        return ((chosen / lengths[0] - rejected / lengths[1] - 1 / (2 * dpo.beta)) ** 2).mean()

    losses, gradients = [], []
    for compute_loss in (lambda: trainer.compute_loss(model, dict(batch)), hand_loss):
        model.zero_grad()
        loss = compute_loss()
        loss.backward()
        losses.append(loss.item())
        gradients.append({name: p.grad.clone() for name, p in adapter_parameters(model).items()})
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert losses[0] != pytest.approx(-F.logsigmoid(torch.tensor(0.0)).item())  # not the reference's own loss
    for name, gradient in gradients[0].items():
        assert gradient.abs().max() > 0
        torch.testing.assert_close(gradient, gradients[1][name], rtol=1e-4, atol=1e-7)


def preference_pair(i: int) -> dict:
    return {
        "prompt": [{"role": "user", "content": f"What is {i} + {i}?" + " Think." * i}],
        "chosen": [{"role": "assistant", "content": str(2 * i)}],
        "rejected": [{"role": "assistant", "content": str(2 * i + 1) + " or so"}],
    }


def test_two_federated_rounds_raise_preference_accuracy_and_resume_to_the_same_adapter(
    tiny_overrides, tmp_path, run_and_resume_after_round_1
):
    """Pairs of our tasks' prompts where the answer is preferred to a refusal, 2 clients, 2 rounds: the base ties every
    held-out pair (margin 0, accuracy 0, loss log 2); each round the held-out pairs prefer the answer more, and after
    two rounds nearly all of them do. (A tiny random model cannot tell a right answer from a near miss, so the
    generated pairs would test luck; a reference that followed the adapter would keep every margin at 0.) The run's
    directory as it stood after round 1, resumed, ends on the same final adapter and margin."""
    from flb.data.tasks import generate_tasks

    pairs = [
        {"task": t["task"], "prompt": t["prompt"], "chosen": t["completion"], "rejected": "I don't know."}
        for t in generate_tasks(200, 3)
    ]
    data = write_jsonl(tmp_path / "answer-over-refusal.jsonl", pairs)
    overrides = tiny_overrides + DPO + [f"dataset_name={data}", "eval.size=24"]
    uninterrupted, resumed = run_and_resume_after_round_1(overrides)
    rows = metrics_rows(uninterrupted)
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert rows[0]["preference_accuracy"] == 0.0 and rows[0]["preference_margin"] == 0.0
    assert rows[0]["eval_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert 0 < rows[1]["preference_margin"] < rows[2]["preference_margin"]
    assert rows[2]["preference_accuracy"] >= 0.9
    assert rows[2]["eval_loss"] < rows[1]["eval_loss"] < rows[0]["eval_loss"]
    assert adapter_file_digest(resumed / "final_adapter") == adapter_file_digest(uninterrupted / "final_adapter")
    assert metrics_rows(resumed)[-1]["preference_margin"] == rows[-1]["preference_margin"]


def write_jsonl(path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


@pytest.mark.parametrize(
    ("records", "fragment"),
    [
        (
            [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}],
            "dataset_name: row 2 has no 'rejected' column",
        ),
        ([{"prompt": "a", "completion": "b"}], "dataset_name: row 1 has no 'chosen' column"),
        ([{"prompt": "a", "chosen": "", "rejected": "c"}], "row 1 has no value in column 'chosen'"),
        ([{"prompt": "a", "chosen": "b", "rejected": "b"}], "row 1 has the same chosen and rejected answer"),
        ([{"prompt": "a", "chosen": [{"role": "assistant"}], "rejected": "c"}], "row 1 column 'chosen' message 1"),
    ],
)
def test_bad_preference_data_is_one_error_line_and_no_run_directory(
    tiny_overrides, tmp_path, capsys, records, fragment
):
    data = write_jsonl(tmp_path / "pairs.jsonl", records)
    argv = [arg for o in tiny_overrides + DPO + [f"dataset_name={data}"] for arg in ("--set", o)]
    assert main_simple_fl.main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    runs = tmp_path / "runs"
    assert not runs.is_dir() or not any(runs.iterdir())


def test_preference_data_as_text_or_chat_messages_becomes_chat_pairs():
    from flb.data.load import normalize, normalize_preferences

    text = {"prompt": "Say hi", "chosen": "hi", "rejected": "bye", "task": 3}
    chat = {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}],
        "chosen": [{"role": "assistant", "content": "hi"}],
        "rejected": [{"role": "assistant", "content": "bye"}],
    }
    first, second = normalize_preferences([text, chat])
    assert first == {
        "task": "3",
        "prompt": [{"role": "user", "content": "Say hi"}],
        "chosen": [{"role": "assistant", "content": "hi"}],
        "rejected": [{"role": "assistant", "content": "bye"}],
    }
    assert second["prompt"] == chat["prompt"] and second["task"] == ""
    with pytest.raises(DataError, match="row 1 has no 'prompt' column"):
        normalize_preferences([{"chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match="preference pair .* set client.objective=dpo$"):
        normalize([text])


def test_the_generated_preferences_pair_each_task_with_a_wrong_answer_of_its_kind():
    from flb.data.tasks import TASK_FAMILIES, generate_preferences, generate_tasks

    pairs, tasks = generate_preferences(60, 0), generate_tasks(60, 0)
    assert [(p["task"], p["prompt"], p["chosen"]) for p in pairs] == [
        (t["task"], t["prompt"], t["completion"]) for t in tasks
    ]
    assert all(p["rejected"] != p["chosen"] and p["rejected"].strip() for p in pairs)
    assert {p["task"] for p in pairs} == set(TASK_FAMILIES)
    assert generate_preferences(60, 0) == pairs


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["execution.mode=batched"], "execution.mode: invalid value 'batched'"),
        (["execution.mode=processes"], "execution.mode: invalid value 'processes'"),
        (["mode=split"], "mode: invalid value 'split'"),
        (["client.local_dp=true", "client.dp.mode=dpsgd"], "client.dp.mode: invalid value 'dpsgd'"),
        (["sft.training_arguments={warmup_steps: 1}"], "sft.training_arguments: invalid value"),
        (["dpo.beta=0"], "dpo.beta: invalid value 0"),
        (["dpo.loss_type=exo_pair"], "dpo.loss_type: invalid value 'exo_pair'"),
    ],
)
def test_what_dpo_does_not_combine_with_is_refused_in_one_line(overrides, fragment):
    with pytest.raises(ConfigError) as refused:
        load_config(None, DPO + overrides)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(fragment), message
    if not overrides[0].startswith("dpo."):
        assert "client.objective dpo" in message


def test_update_level_local_dp_runs_with_dpo(tiny_overrides):
    """client.dp.mode update noises the adapter update, whatever loss made it: a DPO run with it completes."""
    import assembly

    overrides = DPO + ["num_rounds=1", "local_steps=1", "client.local_dp=true", "client.dp.noise_multiplier=0.5"]
    rows = metrics_rows(assembly.run(load_config(None, tiny_overrides + overrides)))
    assert [row["round"] for row in rows] == [0, 1] and "preference_accuracy" in rows[1]


@pytest.mark.parametrize("strategy", ["scaffold", "median"])
def test_dpo_trains_under_a_strategy_with_a_client_side_objective_and_a_robust_one(tiny_overrides, strategy):
    """The update is still a LoRA adapter: SCAFFOLD's correction runs in the DPO trainer's steps (its variates come
    back non-zero), and a coordinate-wise median aggregates DPO updates."""
    import assembly
    from flb.run.directory import RunDir
    from flb.run.state_tensors import split_tensors

    overrides = DPO + [f"strategy.name={strategy}", "num_rounds=1", "local_steps=2"]
    run_path = assembly.run(load_config(None, tiny_overrides + overrides))
    rows = metrics_rows(run_path)
    assert rows[-1]["round"] == 1 and rows[-1]["preference_margin"] != 0
    if strategy == "scaffold":
        variates = split_tensors(RunDir.open(run_path).read_checkpoint()["strategy"])[1]
        assert variates and all(t.abs().sum() > 0 for t in variates.values())


def test_a_flower_fleet_is_refused_with_dpo_before_anything_is_built():
    from assembly.build import prepare

    with pytest.raises(ConfigError, match=r"^client.objective: dpo runs its clients in this process only"):
        prepare(load_config(None, DPO), in_process_clients=False)


def test_a_dpo_run_with_quality_scores_is_recorded_on_the_chain_and_verifies(tiny_model_dir, tmp_path):
    """The ledger records DPO rounds as any others (the quality score's held-out loss is the DPO loss), and the
    explorer's --verify checks the recorded trail against the run directory."""
    import contextlib
    import io

    from chain import explorer
    from tests.chain.conftest import whole_run

    run_dir = whole_run(tiny_model_dir, tmp_path / "runs", *DPO, "chain.scoring=quality")
    with contextlib.redirect_stdout(io.StringIO()):
        assert explorer.main([str(run_dir), "--verify"]) == 0
