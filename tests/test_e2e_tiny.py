"""Whole federated runs on the tiny model through the real entry point."""
from __future__ import annotations

import json

import pytest

import main_simple_fl
from flb.config import load_config
from flb.digests import adapter_digest, adapter_file_digest
from flb.rundir import RunDir
from flb.state_tensors import split_tensors


def run(overrides, **kwargs):
    return main_simple_fl.run(load_config(None, overrides), **kwargs)


def round_metrics(run_path):
    lines = [json.loads(l) for l in (run_path / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if m["kind"] == "round"]


def test_two_rounds_lower_eval_loss_and_adapter_loads_with_plain_peft(tiny_overrides, tiny_model_dir):
    import torch
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
    resumed = main_simple_fl.run(main_simple_fl.resolve_config(
        main_simple_fl.parse_args(["--resume", str(cut_short), "--set", "num_rounds=2"])), resume=str(cut_short))
    assert resumed == cut_short
    assert adapter_file_digest(resumed / "final_adapter") == adapter_file_digest(uninterrupted / "final_adapter")
    assert [r["round"] for r in round_metrics(resumed)] == [0, 1, 2]


@pytest.mark.parametrize("strategy", ["fedprox", "scaffold"])
def test_a_strategy_with_client_side_parts_resumes_to_the_identical_digest(tiny_overrides, strategy):
    """Round 2 trains with FedProx's term, or with SCAFFOLD's c - c_i: the server's c from the checkpoint and each
    client's c_i from its private state must come back exactly for the digests to match."""
    overrides = tiny_overrides + [f"strategy.name={strategy}", "strategy.fedprox.mu=0.5", "local_steps=2"]
    uninterrupted = run(overrides)
    cut_short = run(overrides + ["num_rounds=1"])
    resumed = main_simple_fl.run(main_simple_fl.resolve_config(
        main_simple_fl.parse_args(["--resume", str(cut_short), "--set", "num_rounds=2"])), resume=str(cut_short))
    assert adapter_file_digest(resumed / "final_adapter") == adapter_file_digest(uninterrupted / "final_adapter")
    variates = [split_tensors(RunDir.open(path).read_checkpoint()["strategy"])[1] for path in (uninterrupted, resumed)]
    assert adapter_digest(variates[0]) == adapter_digest(variates[1])
    assert bool(variates[0]) == (strategy == "scaffold") and all(t.abs().sum() > 0 for t in variates[0].values())


def test_server_dp_run_completes(tiny_overrides):
    run_path = run(tiny_overrides + ["num_rounds=1"], )
    dp_path = main_simple_fl.run(load_config(None, tiny_overrides + ["num_rounds=1"], use_server_dp=True))
    config = json.loads((dp_path / "config.json").read_text())
    assert config["strategy"]["name"] == "dp_fixed_clipping"
    assert adapter_file_digest(dp_path / "round_1") != adapter_file_digest(run_path / "round_1")


def test_cli_config_error_is_one_line(capsys):
    assert main_simple_fl.main(["--set", "model.quantization=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: model.quantization: invalid value 3; allowed: 4 | 8 | null"


@pytest.mark.parametrize("strategy", ["dp_fixed_clipping", "dp_adaptive_clipping"])
def test_cli_use_server_dp_false_means_no_server_dp(capsys, strategy):
    args = main_simple_fl.parse_args(["--use_server_dp=false", "--set", f"strategy.name={strategy}"])
    assert main_simple_fl.resolve_config(args).strategy.name == "fedavg"
    assert main_simple_fl.main(["--use_server_dp=maybe"]) == 2
    assert "allowed: true | false" in capsys.readouterr().err


def test_export_merged_matches_base_plus_adapter(tiny_overrides, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_path = run(tiny_overrides + ["num_rounds=1", "local_steps=2"], export_merged=True)
    merged = AutoModelForCausalLM.from_pretrained(run_path / "merged").eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                             run_path / "final_adapter").eval()
    tokens = torch.tensor([[1, 5, 9, 200, 3000]])
    with torch.no_grad():
        assert torch.allclose(merged(tokens).logits, with_adapter(tokens).logits, atol=1e-4)


def test_bad_input_leaves_no_run_directory_behind(tiny_overrides, tmp_path, capsys):
    overrides = tiny_overrides + [f"dataset_name={tmp_path / 'missing.jsonl'}"]
    assert main_simple_fl.main(sum((["--set", o] for o in overrides), [])) == 2
    assert "dataset_name" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert main_simple_fl.main(sum((["--set", o] for o in tiny_overrides), []) + ["--set", "model.quantization=4",
                                                                                   "--export-merged"]) == 2
    assert "--export-merged: cannot merge into a quantized base" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
