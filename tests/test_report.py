"""flb.report: each eval suite's headline score, in summary.json and plots/suites.png."""
from __future__ import annotations

import json

from flb.report import suite_scores, write_plots, write_summary
from flb.rundir import RunDir


def round_row(round: int, mc: float, he: float, arc: float) -> dict:
    return {"kind": "round", "round": round, "num_clients": 2, "eval_loss": 1.0 - round / 10, "global_digest": "d",
            "suites": {"multiple_choice": {"accuracy": mc, "correct": 1, "total": 4},
                       "humaneval": {"pass@1": he, "passed": 0, "total": 3},
                       "lm_eval": {"arc_easy": {"acc_stderr": 0.01, "acc": arc, "acc_norm": 0.9}}}}


def test_suite_scores_take_each_suites_headline_number():
    assert suite_scores(round_row(1, 0.25, 1 / 3, 0.5)) == {
        "multiple_choice accuracy": 0.25, "humaneval pass@1": 1 / 3, "lm_eval arc_easy acc": 0.5}
    assert suite_scores({"kind": "round"}) == {}


def test_summary_and_plot_hold_the_suites_before_and_after(tmp_path):
    from flb.config import Config

    run = RunDir(tmp_path)
    run.append_metrics(round_row(0, 0.25, 0.0, 0.5), round_row(1, 0.75, 2 / 3, 0.6))
    summary = write_summary(run, "digest", Config(chain_record=False))
    assert summary["suites"] == {
        "round_0": {"multiple_choice accuracy": 0.25, "humaneval pass@1": 0.0, "lm_eval arc_easy acc": 0.5},
        "final": {"multiple_choice accuracy": 0.75, "humaneval pass@1": 2 / 3, "lm_eval arc_easy acc": 0.6}}
    assert json.loads((tmp_path / "summary.json").read_text())["suites"] == summary["suites"]
    assert tmp_path / "plots" / "suites.png" in write_plots(run)
    assert (tmp_path / "plots" / "suites.png").stat().st_size > 1000
