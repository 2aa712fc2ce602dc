"""A whole run recorded on the embedded chain, inspected and verified with the explorer."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import main_simple_fl
from chain import explorer
from flb.config import load_config

pytestmark = pytest.mark.chain


@pytest.fixture
def chain_overrides(tiny_overrides):
    return tiny_overrides + ["chain_record=true", "chain.backend=embedded", "local_steps=2"]


def test_default_style_run_leaves_a_verifiable_trail(chain_overrides, capsys):
    run_path = main_simple_fl.run(load_config(None, chain_overrides))
    printed = capsys.readouterr().out
    assert "FLB contract 0x" in printed and f"python -m chain.explorer --verify {run_path}" in printed

    trail = json.loads((run_path / "chain" / "trail.json").read_text())
    rounds = explorer.rounds_from(trail)
    assert sorted(rounds) == [0, 1, 2]
    assert rounds[0]["clients"] == [] and len(rounds[2]["clients"]) == 2
    assert all(score > 0 for score in explorer.scores_from(trail).values())

    assert explorer.main(["--verify", str(run_path)]) == 0
    assert explorer.main([str(run_path)]) == 0
    assert "RoundRecorded" in capsys.readouterr().out

    tampered = run_path / "round_2" / "updates" / "client_1.safetensors"
    tensors = load_file(str(tampered))
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + torch.full_like(tensors[first], 1e-3)
    save_file(tensors, str(tampered))
    capsys.readouterr()
    assert explorer.main(["--verify", str(run_path)]) == 1
    assert "round 2 client 1" in capsys.readouterr().out


def test_quality_scores_are_leave_one_out_and_recorded(chain_overrides):
    run_path = main_simple_fl.run(load_config(None, chain_overrides + ["chain.scoring=quality", "num_rounds=1"]))
    rows = [json.loads(l) for l in (run_path / "metrics.jsonl").read_text().splitlines()]
    round_1 = next(r for r in rows if r["kind"] == "round" and r["round"] == 1)
    trail = json.loads((run_path / "chain" / "trail.json").read_text())
    assert explorer.rounds_from(trail)[1]["scores"] == round_1["scores"]
    assert len(round_1["scores"]) == 2 and all(isinstance(s, int) and s >= 0 for s in round_1["scores"])
    assert explorer.main(["--verify", str(run_path)]) == 0


def test_resume_records_the_remaining_rounds_and_still_verifies(chain_overrides):
    cut_short = main_simple_fl.run(load_config(None, chain_overrides + ["num_rounds=1"]))
    args = main_simple_fl.parse_args(["--resume", str(cut_short), "--set", "num_rounds=2"])
    main_simple_fl.run(main_simple_fl.resolve_config(args), resume=str(cut_short))
    trail = json.loads((cut_short / "chain" / "trail.json").read_text())
    assert sorted(explorer.rounds_from(trail)) == [0, 1, 2]
    assert explorer.main(["--verify", str(cut_short)]) == 0
