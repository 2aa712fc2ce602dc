"""Whole federated runs on the tiny model through the real entry point."""

from __future__ import annotations

import json
from unittest import mock

import pytest

import assembly
import main_simple_fl
from flb.audit.digests import adapter_digest, adapter_file_digest
from flb.config import load_config
from flb.run.directory import RunDir
from flb.run.state_tensors import split_tensors


def run(overrides, **kwargs):
    return assembly.run(load_config(None, overrides), **kwargs)


def round_metrics(run_path):
    lines = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if m["kind"] == "round"]


def test_two_rounds_lower_eval_loss_and_adapter_loads_with_plain_peft(tiny_overrides, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_path = run(tiny_overrides)
    rounds = round_metrics(run_path)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[-1]["eval_loss"] < rounds[0]["eval_loss"]
    assert all(r["num_clients"] == 2 for r in rounds[1:])
    assert (run_path.parent / "latest").resolve() == run_path.resolve()

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    loaded = PeftModel.from_pretrained(base, run_path / "final_adapter")
    saved = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert saved and any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)
    assert adapter_file_digest(run_path / "final_adapter") == adapter_file_digest(run_path / "round_2")
    assert rounds[-1]["global_digest"] == adapter_file_digest(run_path / "round_2")
    for name in ("eval_loss.png", "accuracy.png", "client_train_loss.png"):
        assert (run_path / "plots" / name).stat().st_size > 1000


def test_resume_gives_the_identical_final_digest(tiny_overrides):
    uninterrupted = run(tiny_overrides)
    cut_short = run(tiny_overrides + ["num_rounds=1"])
    resumed = assembly.run(
        assembly.resolve_config(assembly.parse_args(["--resume", str(cut_short), "--set", "num_rounds=2"])),
        resume=str(cut_short),
    )
    assert resumed == cut_short
    assert adapter_file_digest(resumed / "final_adapter") == adapter_file_digest(uninterrupted / "final_adapter")
    assert [r["round"] for r in round_metrics(resumed)] == [0, 1, 2]


def test_fedprox_in_batched_mode_resumes_to_the_identical_digest(tiny_overrides):
    """Round 2 trains with FedProx's term towards the global adapter restored from the checkpoint (SCAFFOLD's
    resume is in the cosine test below), the clients trained together (execution.mode batched): the resumed run
    forms other groups (its first round starts with one client alone) and still ends on the same digest."""
    overrides = tiny_overrides + [
        "strategy.name=fedprox",
        "strategy.fedprox.mu=0.5",
        "local_steps=2",
        "execution.mode=batched",
    ]
    uninterrupted = run(overrides)
    cut_short = run(overrides + ["num_rounds=1"])
    resumed = assembly.run(
        assembly.resolve_config(assembly.parse_args(["--resume", str(cut_short), "--set", "num_rounds=2"])),
        resume=str(cut_short),
    )
    assert adapter_file_digest(resumed / "final_adapter") == adapter_file_digest(uninterrupted / "final_adapter")
    assert RunDir.open(uninterrupted).read_checkpoint()["strategy"] == {}


def test_scaffold_under_cosine_resumes_exactly_with_the_rates_and_bytes_of_each_round(
    tiny_overrides, run_and_resume_after_round_1
):
    """3 rounds of SCAFFOLD (extras go both ways) under cosine_over_rounds. The copy resumed after round 1 ends on
    the same final adapter and server c: c from the checkpoint and each client's c_i from its private state came
    back exactly. Every optimizer step of round r runs at the schedule's rate, in both runs; the bytes counted are
    those of the tensors sent (global adapter and c to each client) and received (each update file's tensors)."""
    from safetensors.torch import load_file

    from client.sft import CorrectedSteps
    from flb.run.comm import tensor_bytes

    step_rates = []
    before_step = CorrectedSteps.on_pre_optimizer_step

    def recording_the_rate(self, *args, **kwargs):
        step_rates.append(kwargs["optimizer"].param_groups[0]["lr"])
        return before_step(self, *args, **kwargs)

    with mock.patch.object(
        CorrectedSteps, "on_pre_optimizer_step", recording_the_rate
    ):  # the fixture undoes monkeypatch
        uninterrupted, resumed = run_and_resume_after_round_1(
            tiny_overrides
            + [
                "strategy.name=scaffold",
                "num_rounds=3",
                "local_steps=2",
                "sft.lr_schedule=cosine_over_rounds",
                "sft.learning_rate=0.01",
                "sft.min_learning_rate=0.001",
            ]
        )
    assert adapter_file_digest(resumed / "final_adapter") == adapter_file_digest(uninterrupted / "final_adapter")
    variates = [split_tensors(RunDir.open(path).read_checkpoint()["strategy"])[1] for path in (uninterrupted, resumed)]
    assert variates[0] and all(t.abs().sum() > 0 for t in variates[0].values())
    assert adapter_digest(variates[0]) == adapter_digest(variates[1])
    expected = {1: 0.01, 2: 0.0055, 3: 0.001}  # 0.001 + 0.5 * 0.009 * (1 + cos(pi * (r - 1) / 2))
    per_round = 2 * 2  # clients x local steps
    assert step_rates == pytest.approx([expected[r] for r in (1, 2, 3, 2, 3) for _ in range(per_round)])
    for path in (uninterrupted, resumed):
        rounds = round_metrics(path)[1:]
        assert [r["learning_rate"] for r in rounds] == pytest.approx(list(expected.values()))
        total = 0
        for r in rounds:
            adapter = tensor_bytes(load_file(path / f"round_{r['round'] - 1}" / "adapter_model.safetensors"))
            updates = sorted((path / f"round_{r['round']}" / "updates").glob("*.safetensors"))
            assert r["comm_down_bytes"] == 2 * adapter * 2  # (adapter + c, of the adapter's shapes) x 2 clients
            assert r["comm_up_bytes"] == sum(tensor_bytes(load_file(f)) for f in updates) == 2 * adapter * 2
            total += r["comm_down_bytes"] + r["comm_up_bytes"]
            assert r["comm_total_down_bytes"] + r["comm_total_up_bytes"] == total
        summary = json.loads((path / "summary.json").read_text())
        assert summary["comm"] == {"down_bytes": total // 2, "up_bytes": total // 2}
    assert (uninterrupted / "plots" / "comm.png").stat().st_size > 1000


def test_server_dp_run_completes(tiny_overrides):
    run_path = run(
        tiny_overrides + ["num_rounds=1"],
    )
    dp_path = assembly.run(load_config(None, tiny_overrides + ["num_rounds=1"], use_server_dp=True))
    config = json.loads((dp_path / "config.json").read_text())
    assert config["strategy"]["name"] == "dp_fixed_clipping"
    assert adapter_file_digest(dp_path / "round_1") != adapter_file_digest(run_path / "round_1")


def test_cli_config_error_is_one_line(capsys):
    assert main_simple_fl.main(["--set", "model.quantization=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: model.quantization: invalid value 3; allowed: 4 | 8 | null"


@pytest.mark.parametrize("strategy", ["dp_fixed_clipping", "dp_adaptive_clipping"])
def test_cli_use_server_dp_false_means_no_server_dp(capsys, strategy):
    args = assembly.parse_args(["--use_server_dp=false", "--set", f"strategy.name={strategy}"])
    assert assembly.resolve_config(args).strategy.name == "fedavg"
    assert main_simple_fl.main(["--use_server_dp=maybe"]) == 2
    assert "allowed: true | false" in capsys.readouterr().err


def test_export_merged_matches_base_plus_adapter(tiny_overrides, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_path = run(tiny_overrides + ["num_rounds=1", "local_steps=2"], export_merged=True)
    merged = AutoModelForCausalLM.from_pretrained(run_path / "merged").eval()
    with_adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), run_path / "final_adapter"
    ).eval()
    tokens = torch.tensor([[1, 5, 9, 200, 3000]])
    with torch.no_grad():
        assert torch.allclose(merged(tokens).logits, with_adapter(tokens).logits, atol=1e-4)


def test_bad_input_leaves_no_run_directory_behind(tiny_overrides, tmp_path, capsys):
    overrides = tiny_overrides + [f"dataset_name={tmp_path / 'missing.jsonl'}"]
    assert main_simple_fl.main(sum((["--set", o] for o in overrides), [])) == 2
    assert "dataset_name" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert (
        main_simple_fl.main(
            sum((["--set", o] for o in tiny_overrides), []) + ["--set", "model.quantization=4", "--export-merged"]
        )
        == 2
    )
    assert "--export-merged: cannot merge into a quantized base" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
