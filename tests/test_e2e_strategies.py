"""Every strategy of the strategy package, two rounds through the real entry point on the tiny model; a run
resumed after round 1 ends on the same final adapter, so the strategy's state (moments included) is restored
exactly."""
from __future__ import annotations

import json

import pytest

from flb.digests import adapter_file_digest

# one step of one example per client, two eval examples of one new token: what is checked is the strategy's state
CHEAP = ["local_steps=1", "sft.batch_size=1", "eval.size=2", "eval.batch_size=2", "eval.max_new_tokens=1"]
THREE_CLIENTS = ["num_clients=3", "clients_per_round=3", "server.min_clients=3"]  # what krum and bulyan need at f=0
STATEFUL = {"fedavgm", "fedadagrad", "fedadam", "fedyogi", "norm_bounding"}  # norm_bounding wraps fedadam below


@pytest.mark.parametrize("strategy", [
    ["strategy.name=fedavgm"], ["strategy.name=fedadagrad"], ["strategy.name=fedadam"], ["strategy.name=fedyogi"],
    ["strategy.name=median", *THREE_CLIENTS], ["strategy.name=trimmed_mean", "strategy.trimmed_mean.beta=0.34", *THREE_CLIENTS],
    ["strategy.name=krum", *THREE_CLIENTS], ["strategy.name=multi_krum", *THREE_CLIENTS],
    ["strategy.name=bulyan", *THREE_CLIENTS],
    ["strategy.name=norm_bounding", "strategy.wraps=fedadam", "strategy.norm_bounding.max_norm=0.05"],
], ids=lambda overrides: overrides[0].removeprefix("strategy.name="))
def test_a_run_resumed_after_round_1_ends_where_the_uninterrupted_one_does(strategy, tiny_overrides,
                                                                            run_and_resume_after_round_1):
    uninterrupted, resumed = run_and_resume_after_round_1(tiny_overrides + CHEAP + strategy)

    assert adapter_file_digest(resumed / "final_adapter") == adapter_file_digest(uninterrupted / "final_adapter")
    assert adapter_file_digest(uninterrupted / "round_2") != adapter_file_digest(uninterrupted / "round_1")
    name = strategy[0].removeprefix("strategy.name=")
    assert (resumed / "checkpoint_2.safetensors").exists() == (name in STATEFUL)  # the resume read checkpoint_1
    assert json.loads((resumed / "checkpoint.json").read_text()) == \
        json.loads((uninterrupted / "checkpoint.json").read_text())
