"""strategy.lora_aggregation: separate | ffa | svd. The math on tiny LoRA factors (ffa and svd aggregate exactly
where separate does not; svd's error is its truncation error), the config rules, and each mode end to end on the
tiny model with resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

import assembly
from flb.adapters.arithmetic import weighted_average
from flb.adapters.lora_aggregation import aggregation_error, is_lora_a, lora_modules, mean_product, svd_average
from flb.audit.digests import adapter_file_digest
from flb.config import load_config
from flb.errors import ConfigError

RANK, OUT, IN = 4, 12, 10
MODULES = ("layers.0.q_proj", "layers.0.v_proj")
WEIGHTS = (3, 5, 7)


def adapter(a_of, b_of) -> dict:
    return {**{f"{m}.lora_A.weight": a_of(m) for m in MODULES}, **{f"{m}.lora_B.weight": b_of(m) for m in MODULES}}


def clients(a_of_client) -> list[tuple[dict, float]]:
    """Three clients with random B_k and A_k = a_of_client(k, module), weighted 3, 5, 7."""
    generator = torch.Generator().manual_seed(1)
    return [
        (adapter(lambda m, k=k: a_of_client(k, m), lambda m: torch.randn(OUT, RANK, generator=generator)), w)
        for k, w in enumerate(WEIGHTS)
    ]


SHARED_A = {m: torch.randn(RANK, IN, generator=torch.Generator().manual_seed(i)) for i, m in enumerate(MODULES)}
MIXING = [
    torch.eye(RANK) + 0.5 * torch.randn(RANK, RANK, generator=torch.Generator().manual_seed(10 + k))
    for k in range(len(WEIGHTS))
]  # invertible: each client's A spans the same row space, differently


def test_separate_averaging_is_inexact():
    updates = clients(lambda k, m: MIXING[k] @ SHARED_A[m])
    assert aggregation_error(updates, weighted_average(updates)) > 0.05


def test_ffa_averaging_of_a_frozen_a_is_exact():
    updates = clients(lambda k, m: SHARED_A[m].clone())
    result = weighted_average(updates)
    assert aggregation_error(updates, result) <= 1e-5
    assert all(torch.equal(result[f"{m}.lora_A.weight"], SHARED_A[m]) for m in MODULES)


def test_svd_is_exact_when_the_mean_of_the_products_has_rank_r():
    updates = clients(lambda k, m: MIXING[k] @ SHARED_A[m])
    assert aggregation_error(updates, svd_average(updates)) <= 1e-5


def test_svd_error_is_the_truncation_error_above_rank_r():
    generator = torch.Generator().manual_seed(2)
    updates = clients(lambda k, m: torch.randn(RANK, IN, generator=generator))
    tails = [torch.linalg.svdvals(mean_product(updates, a, b)) for a, b in lora_modules(updates[0][0])]
    truncation = math.sqrt(
        sum(float(s[RANK:].square().sum()) for s in tails) / sum(float(s.square().sum()) for s in tails)
    )
    assert truncation > 0.05
    assert aggregation_error(updates, svd_average(updates)) == pytest.approx(truncation, rel=1e-5)
    assert aggregation_error(updates, svd_average(updates)) < aggregation_error(updates, weighted_average(updates))


def test_svd_factors_keep_shapes_and_dtypes_and_split_the_singular_values_evenly():
    updates = clients(lambda k, m: MIXING[k] @ SHARED_A[m])
    result = svd_average(updates)
    for a_name, b_name in lora_modules(result):
        a, b = result[a_name].double(), result[b_name].double()
        assert (a.shape, b.shape, result[a_name].dtype) == ((RANK, IN), (OUT, RANK), torch.float32)
        assert torch.allclose(b.T @ b, a @ a.T, atol=1e-4)  # both S_r: balanced


def test_the_error_uses_the_weights_it_is_given():
    updates = clients(lambda k, m: SHARED_A[m].clone())
    result = weighted_average(updates)
    assert aggregation_error([(state, 1.0) for state, _ in updates], result) > 0.01


def test_only_lora_a_is_a():
    assert is_lora_a("m.q_proj.lora_A.weight") and is_lora_a("m.q_proj.lora_A.default.weight")
    assert not is_lora_a("m.q_proj.lora_B.weight") and not is_lora_a("m.embed_tokens.lora_embedding_A")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["strategy.name=dp_fixed_clipping"],
            "strategy.lora_aggregation: invalid value 'svd'; allowed: separate | ffa "
            "with dp_fixed_clipping (its DP guarantee is for a noised mean",
        ),
        (
            ["strategy.name=median"],
            "strategy.lora_aggregation: invalid value 'svd'; allowed: separate | ffa with median "
            "(svd re-factorises a mean: use it with fedavg | fedprox)",
        ),
        (
            ["strategy.name=norm_bounding", "strategy.wraps=fedadam"],
            "strategy.lora_aggregation: invalid value 'svd'; allowed: separate | ffa with fedadam (svd",
        ),
    ],
)
def test_svd_is_refused_where_the_output_is_not_a_plain_mean(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, ["strategy.lora_aggregation=svd", *overrides])
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "norm_bounding"])
def test_svd_is_accepted_over_a_mean(name):
    assert load_config(None, ["strategy.lora_aggregation=svd", f"strategy.name={name}"]).strategy.name == name


# --- through the strategies, as the registry builds them -----------------------------------------------------------


def strategy_for(mode, name):
    from flb.privacy.secret_random import SecretRandom
    from server.strategy import build_strategy

    settings = [f"strategy.lora_aggregation={mode}", f"strategy.name={name}", "strategy.norm_bounding.max_norm=1e3"]
    return build_strategy(load_config(None, settings), SecretRandom())


def as_updates(states_and_weights):
    from flb.audit.digests import adapter_digest
    from flb.types import ClientUpdate

    return [
        ClientUpdate(
            client_id=k,
            round=1,
            tensors=state,
            num_examples=w,
            train_loss=0.0,
            wall_time_s=0.0,
            num_bytes=0,
            digest=adapter_digest(state),
        )
        for k, (state, w) in enumerate(states_and_weights)
    ]


GLOBAL = adapter(lambda m: SHARED_A[m], lambda m: torch.zeros(OUT, RANK))


@pytest.mark.parametrize("name", ["fedavg", "dp_fixed_clipping", "dp_adaptive_clipping"])
def test_ffa_keeps_a_bit_for_bit_and_dp_noises_b_only(name):
    updates = as_updates(clients(lambda k, m: SHARED_A[m].clone()))
    frozen = strategy_for("ffa", name).aggregate(GLOBAL, updates, 1, len(updates))
    plain = strategy_for("separate", name).aggregate(GLOBAL, updates, 1, len(updates))
    a_names = [n for n in GLOBAL if is_lora_a(n)]
    assert all(torch.equal(frozen[n], GLOBAL[n]) for n in a_names)
    assert any(not torch.equal(frozen[n], GLOBAL[n]) for n in GLOBAL if not is_lora_a(n))
    assert all(torch.equal(plain[n], GLOBAL[n]) for n in a_names) == (name == "fedavg")  # DP noises A unless ffa


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "norm_bounding"])
def test_svd_mode_gives_mean_strategies_the_svd_mean(name):
    states_and_weights = clients(lambda k, m: MIXING[k] @ SHARED_A[m])
    result = strategy_for("svd", name).aggregate(GLOBAL, as_updates(states_and_weights), 1, len(WEIGHTS))
    assert aggregation_error(states_and_weights, result) <= 1e-5


def test_the_error_is_taken_against_the_strategys_mean():
    updates = as_updates(clients(lambda k, m: SHARED_A[m].clone()))
    assert strategy_for("ffa", "fedavg").mean_weights(updates) == list(WEIGHTS)
    assert strategy_for("ffa", "dp_fixed_clipping").mean_weights(updates) == [1.0] * len(WEIGHTS)


# --- end to end on the tiny model ---------------------------------------------------------------------------------


def run_mode(overrides, mode, **changes):
    settings = overrides + [f"strategy.lora_aggregation={mode}", "local_steps=2", "eval.size=4"]
    return assembly.run(load_config(None, settings + [f"{k}={v}" for k, v in changes.items()]))


def lines(run_path, kind):
    rows = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row["kind"] == kind]


def separate_error(run_path, round_number) -> float:
    """What averaging the round's saved updates apart would have given."""
    from safetensors.torch import load_file

    counts = {
        row["client_id"]: row["num_examples"] for row in lines(run_path, "client") if row["round"] == round_number
    }
    updates = [
        (load_file(run_path / f"round_{round_number}" / "updates" / f"client_{i}.safetensors"), n)
        for i, n in sorted(counts.items())
    ]
    return aggregation_error(updates, weighted_average(updates))


def test_separate_reports_the_error_of_averaging_the_factors_apart(tiny_overrides):
    finished = run_mode(tiny_overrides, "separate")  # its resume: tests/test_e2e_tiny.py
    errors = [row["lora_aggregation_error"] for row in lines(finished, "round")[1:]]
    assert min(errors) > 1e-3 and errors == pytest.approx([separate_error(finished, r) for r in (1, 2)])


def test_ffa_keeps_a_frozen_aggregates_exactly_and_resumes_to_the_same_digest(tiny_overrides):
    from safetensors.torch import load_file

    finished = run_mode(tiny_overrides, "ffa")
    assert max(row["lora_aggregation_error"] for row in lines(finished, "round")[1:]) <= 1e-5
    initial, final = (load_file(finished / folder / "adapter_model.safetensors") for folder in ("round_0", "round_2"))
    assert all(torch.equal(initial[name], final[name]) for name in initial if is_lora_a(name))
    assert any(not torch.equal(initial[name], final[name]) for name in initial if not is_lora_a(name))
    assert_resume_reproduces(tiny_overrides, "ffa", finished)


def test_svd_aggregates_closer_than_separate_and_resumes_to_the_same_digest(tiny_overrides):
    finished = run_mode(tiny_overrides, "svd")
    errors = [row["lora_aggregation_error"] for row in lines(finished, "round")[1:]]
    assert all(error < separate_error(finished, r) for r, error in zip((1, 2), errors))
    assert_resume_reproduces(tiny_overrides, "svd", finished)


def assert_resume_reproduces(overrides, mode, finished):
    cut_short = run_mode(overrides, mode, num_rounds=1)
    resumed = assembly.run(
        assembly.resolve_config(assembly.parse_args(["--resume", str(cut_short), "--set", "num_rounds=2"])),
        resume=str(cut_short),
    )
    assert adapter_file_digest(resumed / "final_adapter") == adapter_file_digest(finished / "final_adapter")
