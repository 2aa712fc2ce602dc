"""flb.run.summary: each eval suite's headline score, in summary.json and plots/suites.png."""

from __future__ import annotations

import json

from flb.run.directory import RunDir
from flb.run.summary import ledger_lines, round_line, suite_scores, summary_table, write_plots, write_summary


def round_row(round: int, mc: float, he: float, arc: float) -> dict:
    return {
        "kind": "round",
        "round": round,
        "num_clients": 2,
        "eval_loss": 1.0 - round / 10,
        "global_digest": "d",
        "suites": {
            "multiple_choice": {"accuracy": mc, "correct": 1, "total": 4},
            "humaneval": {"pass@1": he, "passed": 0, "total": 3},
            "lm_eval": {"arc_easy": {"acc_stderr": 0.01, "acc": arc, "acc_norm": 0.9}},
        },
    }


def test_suite_scores_take_each_suites_headline_number():
    assert suite_scores(round_row(1, 0.25, 1 / 3, 0.5)) == {
        "multiple_choice accuracy": 0.25,
        "humaneval pass@1": 1 / 3,
        "lm_eval arc_easy acc": 0.5,
    }
    assert suite_scores({"kind": "round"}) == {}


def test_summary_and_plot_hold_the_suites_before_and_after(tmp_path):
    from flb.config import Config

    run = RunDir(tmp_path)
    run.append_metrics(round_row(0, 0.25, 0.0, 0.5), round_row(1, 0.75, 2 / 3, 0.6))
    summary = write_summary(run, "digest", Config(chain_record=False))
    assert summary["suites"] == {
        "round_0": {"multiple_choice accuracy": 0.25, "humaneval pass@1": 0.0, "lm_eval arc_easy acc": 0.5},
        "final": {"multiple_choice accuracy": 0.75, "humaneval pass@1": 2 / 3, "lm_eval arc_easy acc": 0.6},
    }
    assert json.loads((tmp_path / "summary.json").read_text())["suites"] == summary["suites"]
    assert tmp_path / "plots" / "suites.png" in write_plots(run)
    assert (tmp_path / "plots" / "suites.png").stat().st_size > 1000


def client_row(round: int, client_id: int, train_loss: float | None) -> dict:
    return {"kind": "client", "round": round, "client_id": client_id, "train_loss": train_loss}


def test_the_table_has_a_column_per_suite_and_splits_training_from_evaluation_time():
    rows = [
        round_row(0, 0.25, 0.0, 0.5),
        client_row(1, 0, 2.0),
        client_row(1, 1, 4.0),
        {**round_row(1, 0.75, 2 / 3, 0.6), "round_time_s": 12.5, "eval_time_s": 3.25},
    ]
    header, base, first, footer = summary_table(rows).split("\n")
    assert header.split() == [
        "round",
        "clients",
        "eval_loss",
        "ppl",
        "accuracy",
        "multiple_choice_accuracy",
        "humaneval_pass@1",
        "lm_eval_arc_easy_acc",
        "train_loss",
        "train_s",
        "eval_s",
        "comm_MB",
    ]
    assert first.split() == ["1", "2", "0.9000", "-", "-", "0.750", "0.667", "0.600", "3.0000", "12.5", "3.2", "-"]
    assert base.split()[8:10] == ["-", "-"]  # round 0 trains nothing
    for column in ("train_loss", "train_s", "eval_s", "comm_MB"):
        assert column in footer
    assert "epsilon" not in footer


def test_a_round_line_says_what_the_round_did_and_where_its_time_went():
    row = {
        **round_row(2, 0.75, 0.5, 0.6),
        "perplexity": 2.2255,
        "accuracy": 0.25,
        "round_time_s": 41.25,
        "eval_time_s": 12.94,
        "comm_down_bytes": 250_000,
        "comm_up_bytes": 250_000,
        "privacy": {"epsilon": 1.2345},
    }
    line = round_line(row, [client_row(2, 0, 2.0), client_row(2, 1, 3.0)], num_rounds=5)
    assert line == (
        "round 2/5 (2 clients): eval_loss 0.8000 (ppl 2.23), accuracy 0.250, multiple_choice accuracy "
        "0.750, humaneval pass@1 0.500, lm_eval arc_easy acc 0.600, train_loss 2.5000, epsilon 1.234, "
        "0.50 MB, train 41.2 s + eval 12.9 s"
    )
    skipped = {"kind": "round", "round": 3, "skipped": True, "num_sampled": 2, "rejected": [{}, {}]}
    assert round_line(skipped, [], 5) == (
        "round 3/5: skipped (2 of 2 sampled updates rejected; the global adapter is unchanged)"
    )
    late = {**row, "late": [{"client_id": 2, "reason": "client 2: its update came after the round's deadline"}]}
    assert round_line(late, [], 5).startswith("round 2/5 (2 clients, 1 late): eval_loss 0.8000")
    preferred = round_line({**row, "preference_accuracy": 0.875, "preference_margin": 1.25}, [], 5)
    assert "accuracy 0.250, preference accuracy 0.875 (margin 1.250), multiple_choice" in preferred  # objective dpo
    stale = [client_row(2, 0, 2.0), {**client_row(2, 1, 3.0), "start_round": 0}]  # fedbuff: it started from round 0
    assert round_line(row, stale, 5).startswith("round 2/5 (2 clients, 1 stale (up to 1)): eval_loss")
    assert round_line({**skipped, "late": late["late"]}, [], 5) == (
        "round 3/5: skipped (2 of 2 sampled updates rejected, 1 late; the global adapter is unchanged)"
    )


def ledger_summary(rounds: int) -> dict:
    transactions = [
        {"record": "deploy", "status": "confirmed", "tx": "0xd"},
        {"record": "register:0-9", "status": "confirmed", "tx": "0xa"},
    ]
    transactions += [
        {
            "record": f"round:{r}",
            "status": "confirmed" if r < rounds else "queued",
            "tx": f"0x{r}" if r < rounds else None,
        }
        for r in range(rounds + 1)
    ]
    return {
        "chain": "embedded py-evm",
        "chain_id": 1,
        "contract": "0xc",
        "transactions": transactions,
        "pending": 1,
        "explorer": "python -m chain.explorer RUN",
        "verify": "python -m chain.explorer RUN --verify",
    }


def test_the_ledger_is_counted_with_its_last_transactions_and_listed_whole_when_verbose():
    summary = ledger_summary(rounds=40)
    lines = ledger_lines(summary)
    assert lines[1] == "  43 transactions (1 deploy, 1 register, 41 round): 42 confirmed, 1 queued"
    listed = [
        line.split()[0]
        for line in lines
        if line.startswith("  ") and line.split()[0] in {tx["record"] for tx in summary["transactions"]}
    ]
    assert listed == ["round:38", "round:39", "round:40"]
    assert "  round:40                         queued     -" in lines
    assert "  1 records not yet on chain (sent by --resume; see run.log)" in lines
    verbose = ledger_lines(summary, verbose=True)
    assert [line.split()[0] for line in verbose[2:45]] == [tx["record"] for tx in summary["transactions"]]
    assert verbose[-1] == "verify the files against the chain: python -m chain.explorer RUN --verify"
