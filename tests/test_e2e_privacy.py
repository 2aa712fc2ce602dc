"""Whole runs with DP through the real entry point: epsilon is reported, plotted and survives a resume."""
from __future__ import annotations

import json

import main_simple_fl
from flb.config import load_config
from flb.digests import adapter_file_digest

PRIVATE = ["local_steps=2", "eval.size=8", "client.local_dp=true", "client.dp.mode=dpsgd",
           "client.dp.noise_multiplier=1.0", "strategy.name=dp_adaptive_clipping"]


def metrics(run_path):
    return [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]


def test_epsilon_and_clip_norm_after_resume_equal_an_uninterrupted_run(tiny_overrides):
    uninterrupted = main_simple_fl.run(load_config(None, tiny_overrides + PRIVATE))
    cut_short = main_simple_fl.run(load_config(None, tiny_overrides + PRIVATE + ["num_rounds=1"]))
    resumed = main_simple_fl.run(main_simple_fl.resolve_config(
        main_simple_fl.parse_args(["--resume", str(cut_short), "--set", "num_rounds=2"])), resume=str(cut_short))

    final = [json.loads((path / "checkpoint.json").read_text()) for path in (uninterrupted, resumed)]
    assert final[0]["strategy"] == final[1]["strategy"] and final[0]["clients"] == final[1]["clients"]
    assert [m for m in metrics(resumed) if m["kind"] == "round"][-1]["privacy"] == \
        [m for m in metrics(uninterrupted) if m["kind"] == "round"][-1]["privacy"]
    assert adapter_file_digest(resumed / "final_adapter") == adapter_file_digest(uninterrupted / "final_adapter")

    rounds = [m for m in metrics(uninterrupted) if m["kind"] == "round"]
    server = [r["privacy"]["server"] for r in rounds]
    assert [s["steps"] for s in server] == [0, 1, 2] and server[1]["epsilon"] < server[2]["epsilon"]
    assert server[2]["clip_norm"] == final[0]["strategy"]["clip_norm"] != 1.0  # adapted, and checkpointed
    client_lines = [m for m in metrics(uninterrupted) if m["kind"] == "client"]
    assert all(m["privacy"]["mechanism"] == "local_dpsgd" for m in client_lines)
    assert rounds[-1]["privacy"]["epsilon"] == max([server[2]["epsilon"]] +
                                                  [c["epsilon"] for c in rounds[-1]["privacy"]["clients"].values()])
    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert summary["privacy"] == rounds[-1]["privacy"]
    assert (uninterrupted / "plots" / "epsilon.png").stat().st_size > 1000


def test_update_level_local_dp_reports_each_clients_epsilon(tiny_overrides, capsys):
    run_path = main_simple_fl.run(load_config(None, tiny_overrides + [
        "num_rounds=1", "local_steps=2", "eval.size=8", "client.local_dp=true", "client.dp.mode=update",
        "client.dp.target_epsilon=8", "client.dp.clip_norm=0.1"]))
    last = [m for m in metrics(run_path) if m["kind"] == "round"][-1]
    assert set(last["privacy"]["clients"]) == {"0", "1"} and "server" not in last["privacy"]
    assert all(7.9 < c["epsilon"] <= 8.0 for c in last["privacy"]["clients"].values())  # planned for num_rounds=1
    printed = capsys.readouterr().out
    assert "privacy after round 1" in printed and "client 1" in printed and "z = " in printed
