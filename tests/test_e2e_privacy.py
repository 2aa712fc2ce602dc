"""Whole runs with DP through the real entry point: epsilon is reported and plotted, a resume restores every
party's secret state exactly, and an extended run stays within the client's target epsilon."""

from __future__ import annotations

import json
import logging

import assembly
from flb.audit.digests import adapter_file_digest
from flb.config import load_config

PRIVATE = [
    "num_clients=3",
    "clients_per_round=2",
    "local_steps=2",
    "eval.size=8",
    "client.local_dp=true",
    "client.dp.mode=dpsgd",
    "client.dp.noise_multiplier=1.0",
    "strategy.name=dp_adaptive_clipping",
]


def metrics(run_path):
    return [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]


def rounds(run_path):
    return [m for m in metrics(run_path) if m["kind"] == "round"]


def resume(run_path, *overrides):
    args = ["--resume", str(run_path)] + [arg for override in overrides for arg in ("--set", override)]
    return assembly.run(assembly.resolve_config(assembly.parse_args(args)), resume=str(run_path))


def test_a_resumed_dp_run_ends_exactly_where_the_uninterrupted_one_does(
    tiny_overrides, run_and_resume_after_round_1, caplog
):
    """The run directory is copied as it stood after round 1 (secrets included); the uninterrupted run goes on to
    round 2, the copy is resumed: every secret draw (sampling, DP-SGD batches and noise, server noise) repeats."""
    uninterrupted, resumed = run_and_resume_after_round_1(tiny_overrides + PRIVATE)

    weak = [
        r.getMessage() for r in caplog.records if r.name == "flb.privacy.accounting" and r.levelno == logging.WARNING
    ]
    assert (
        weak
        == [
            "server DP: epsilon will be 15.2 after 2 rounds at delta 1e-05 (above 10: a weak guarantee); raise "
            "server.noise_multiplier (now 0.5) to 0.684 or more, or run fewer rounds"
        ]
        * 2
    )  # run, resume

    assert adapter_file_digest(resumed / "final_adapter") == adapter_file_digest(uninterrupted / "final_adapter")
    assert rounds(resumed)[-1]["privacy"] == rounds(uninterrupted)[-1]["privacy"]
    assert (
        json.loads((resumed / "checkpoint.json").read_text())["strategy"]
        == json.loads((uninterrupted / "checkpoint.json").read_text())["strategy"]
    )
    server = [r["privacy"]["server"] for r in rounds(uninterrupted)]
    assert [s["steps"] for s in server] == [0, 1, 2] and server[1]["epsilon"] < server[2]["epsilon"]
    assert server[2]["clip_norm"] != 1.0  # adapted, and restored
    assert all(
        m["privacy"]["mechanism"] == "local_dpsgd" and m["train_loss"] is None
        for m in metrics(uninterrupted)
        if m["kind"] == "client"
    )
    trained = set()  # a round lists the epsilon of the clients that have trained so far, and only theirs
    for row in rounds(uninterrupted):
        trained |= {
            str(m["client_id"]) for m in metrics(uninterrupted) if m["kind"] == "client" and m["round"] == row["round"]
        }
        assert set(row["privacy"].get("clients", {})) == trained
    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert summary["privacy"] == rounds(uninterrupted)[-1]["privacy"] and summary["over_target_allowed"] is False
    assert (uninterrupted / "plots" / "epsilon.png").stat().st_size > 1000


def test_update_level_local_dp_reports_each_clients_epsilon(tiny_overrides, capsys):
    run_path = assembly.run(
        load_config(
            None,
            tiny_overrides
            + [
                "num_rounds=1",
                "local_steps=2",
                "eval.size=8",
                "client.local_dp=true",
                "client.dp.mode=update",
                "client.dp.target_epsilon=8",
                "client.dp.clip_norm=0.1",
            ],
        )
    )
    last = rounds(run_path)[-1]
    assert set(last["privacy"]["clients"]) == {"0", "1"} and "server" not in last["privacy"]
    assert all(7.9 < c["epsilon"] <= 8.0 for c in last["privacy"]["clients"].values())  # planned for num_rounds=1
    printed = capsys.readouterr().out
    assert "privacy after round 1" in printed and "client 1" in printed and "reported by the client" in printed


def test_an_extended_run_replans_its_noise_and_stays_within_the_target(tiny_overrides, caplog):
    from opacus.accountants import RDPAccountant

    first = assembly.run(
        load_config(
            None,
            tiny_overrides
            + [
                "num_rounds=1",
                "local_steps=1",
                "eval.size=8",
                "client.local_dp=true",
                "client.dp.mode=update",
                "client.dp.target_epsilon=8",
            ],
        )
    )
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    extended = resume(first, "num_rounds=3")
    report = rounds(extended)[-1]["privacy"]["clients"]["0"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.split(":")[0] for w in warnings] == ["client 0", "client 1"]  # one line per client, not per restore
    assert warnings[0].startswith(
        f"client 0: extended to 3 rounds: z rises from {report['history'][0][0]:.4g} to {report['history'][1][0]:.4g} ("
    )
    assert 7.8 < report["epsilon"] <= 8.0 and report["planned_rounds"] == 3 and report["steps"] == 3
    assert len(report["history"]) == 2 and report["history"][1][0] > report["history"][0][0]
    reference = RDPAccountant()
    reference.history = [tuple(entry) for entry in report["history"]]
    assert reference.get_epsilon(delta=report["delta"]) == report["epsilon"]
    assert json.loads((extended / "config.json").read_text())["num_rounds"] == 3
    resumes = [json.loads(line) for line in (extended / "resumes.jsonl").read_text().splitlines()]
    assert resumes[-1]["changed"] == {"num_rounds": [1, 3]}
