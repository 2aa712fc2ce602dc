"""The strategies of the strategy package, two rounds through the real entry point on the tiny model; for those
with state, a run resumed after round 1 ends on the same final adapter, so the state (moments included) is
restored exactly. (fedavg, fedprox, scaffold and the DP wrappers run in tests/test_e2e_tiny.py and
tests/test_e2e_privacy.py; fedadagrad and fedyogi, fedadam's code but for the second moment, at unit level in
tests/test_strategy_optimizers.py.)"""

from __future__ import annotations

import json

import pytest

from flb.audit.digests import adapter_file_digest

# one step of one example per client, two eval examples of one new token: what is checked is the strategy's state
CHEAP = ["local_steps=1", "sft.batch_size=1", "eval.size=2", "eval.batch_size=2", "eval.max_new_tokens=1"]
THREE_CLIENTS = ["num_clients=3", "clients_per_round=3", "server.min_clients=3"]  # what krum and bulyan need at f=0


@pytest.mark.parametrize(
    "strategy",
    [
        ["strategy.name=fedavgm"],
        ["strategy.name=fedadam"],
        ["strategy.name=norm_bounding", "strategy.wraps=fedadam", "strategy.norm_bounding.max_norm=0.05"],
    ],
    ids=lambda overrides: overrides[0].removeprefix("strategy.name="),
)
def test_a_run_resumed_after_round_1_ends_where_the_uninterrupted_one_does(
    strategy, tiny_overrides, run_and_resume_after_round_1
):
    """The strategies with state (norm_bounding through the fedadam it wraps): their tensors come back from
    checkpoint_1.safetensors. fedadagrad and fedyogi keep fedadam's moments in the same code and differ only in
    the second moment's rule: tests/test_strategy_optimizers.py checks their checkpoints and their arithmetic."""
    uninterrupted, resumed = run_and_resume_after_round_1(tiny_overrides + CHEAP + strategy)

    assert adapter_file_digest(resumed / "final_adapter") == adapter_file_digest(uninterrupted / "final_adapter")
    assert adapter_file_digest(uninterrupted / "round_2") != adapter_file_digest(uninterrupted / "round_1")
    assert (resumed / "checkpoint_2.safetensors").exists()
    assert json.loads((resumed / "checkpoint.json").read_text()) == json.loads(
        (uninterrupted / "checkpoint.json").read_text()
    )


@pytest.mark.parametrize(
    "strategy",
    [
        ["strategy.name=median"],
        ["strategy.name=trimmed_mean", "strategy.trimmed_mean.beta=0.34"],
        ["strategy.name=krum"],
        ["strategy.name=multi_krum"],
        ["strategy.name=bulyan"],
    ],
    ids=lambda overrides: overrides[0].removeprefix("strategy.name="),
)
def test_a_robust_aggregator_runs_two_rounds_and_keeps_no_state(strategy, tiny_overrides):
    """Stateless: nothing to restore, so no resume run (tests/test_e2e_tiny.py resumes a stateless run)."""
    import assembly
    from flb.config import load_config

    run = assembly.run(load_config(None, tiny_overrides + CHEAP + THREE_CLIENTS + strategy))
    assert adapter_file_digest(run / "round_2") != adapter_file_digest(run / "round_1")
    assert json.loads((run / "checkpoint.json").read_text())["strategy"] == {}
    assert not list(run.glob("checkpoint_*.safetensors"))
