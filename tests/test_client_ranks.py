"""Clients of different LoRA ranks (model.lora.client_ranks): truncation and zero-padding by hand, flexlora's
aggregate against the truncated SVD of the mean product, hetlora's self-pruning, a component above a client's rank
staying zero through real training, the refusals, and whole runs (ranks 4, 8 and 16 in worker processes, resumed in
process; the audit recomputes every round)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from client.ranks import ClientRank, TailDecay, tail_share
from flb.adapters.lora_aggregation import MEANS, aggregation_error
from flb.adapters.ranks import at_rank, padded, rank_of, with_zero_tail
from flb.config import HetLoRASettings, load_config
from flb.errors import ConfigError

A, B = "m.lora_A.weight", "m.lora_B.weight"


def factors(rank: int, seed: int, out: int = 6, inp: int = 5) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        A: torch.randn(rank, inp, generator=generator, dtype=torch.float64),
        B: torch.randn(out, rank, generator=generator, dtype=torch.float64),
    }


def product(state: dict) -> torch.Tensor:
    return state[B].double() @ state[A].double()


def test_truncation_and_padding_by_hand_keep_the_product_of_the_first_components():
    state = factors(4, 0)
    first_two = at_rank(state, 2)
    assert torch.equal(first_two[A], state[A][:2]) and torch.equal(first_two[B], state[B][:, :2])
    assert first_two[B].is_contiguous()
    grown = padded(first_two, state)
    assert grown[A].shape == (4, 5) and grown[B].shape == (6, 4) and rank_of(grown) == 4
    assert torch.equal(grown[A][2:], torch.zeros(2, 5)) and torch.equal(grown[B][:, 2:], torch.zeros(6, 2))
    assert torch.equal(product(grown), product(first_two))
    tail = with_zero_tail(state, 2)
    assert torch.equal(tail[A], grown[A]) and torch.equal(tail[B], grown[B])
    assert torch.equal(state[A], factors(4, 0)[A])  # the global adapter itself is untouched


def test_flexlora_is_the_truncated_svd_of_the_weighted_mean_product_and_each_client_starts_from_its_truncation():
    like = factors(8, 99)
    updates = [
        (padded(factors(rank, seed), like), weight) for rank, seed, weight in ((2, 1, 3.0), (4, 2, 1.0), (8, 3, 2.0))
    ]
    aggregate = MEANS["flexlora"](updates)
    mean = sum(w * product(s) for s, w in updates) / 6.0
    u, s, vh = torch.linalg.svd(mean, full_matrices=False)
    for rank in (8, 4, 2):  # the global adapter (rank 8), and what a client of rank 4 or 2 starts from
        best = u[:, :rank] @ torch.diag(s[:rank]) @ vh[:rank]
        error = float((product(at_rank(aggregate, rank)) - best).norm() / best.norm())
        assert error < 1e-12  # float64 factors: the truncation to the client's rank is the rank-k optimum
    # hetlora: the separate mean of the zero-padded factors, by hand
    hetlora = MEANS["hetlora"](updates)
    assert torch.allclose(hetlora[A], sum(w * s[A] for s, w in updates) / 6.0, rtol=0, atol=1e-15)
    assert torch.allclose(hetlora[B][:, 4:], (2.0 * updates[2][0][B][:, 4:]) / 6.0, rtol=0, atol=1e-15)
    assert aggregation_error(updates, hetlora) > aggregation_error(updates, aggregate)


def test_self_pruning_drops_the_top_components_only_when_they_carry_little():
    state = factors(4, 5)
    state[B][:, 3] *= 1e-3  # component 3 carries almost nothing
    share = tail_share(state, range(3, 4))
    by_hand = float((state[B][:, 3:] @ state[A][3:]).norm() / product(state).norm())
    assert share == pytest.approx(by_hand, rel=1e-12) and share < 0.01
    pruning = HetLoRASettings(prune_fraction=0.25, prune_below=0.01)
    client = ClientRank(0, rank=4, pruning=pruning)
    sent, base = client.sent(state, factors(4, 6))
    assert client.active == 3 and sent[A].shape == (4, 5)  # it still sends its configured rank, the top one zero
    assert torch.equal(sent[A][3], torch.zeros(5)) and torch.equal(sent[B][:, 3], torch.zeros(6))
    assert torch.equal(client.start(state)[A][3], torch.zeros(5))  # and starts every later round without it
    kept = ClientRank(0, rank=4, pruning=HetLoRASettings(prune_fraction=0.25, prune_below=share / 2))
    kept.sent(state, state)
    assert kept.active == 4
    assert ClientRank(0, rank=4).decay({}) is None and ClientRank(0, rank=1, pruning=pruning).decay({}) is None


def test_the_decay_reaches_only_the_top_components_gradients():
    parameters = {name: torch.nn.Parameter(t.float()) for name, t in factors(4, 7).items()}
    for parameter in parameters.values():
        parameter.grad = torch.zeros_like(parameter)
    TailDecay(parameters, range(3, 4), 0.5).apply()
    assert torch.equal(parameters[A].grad[3], 0.5 * parameters[A][3].detach())
    assert torch.equal(parameters[B].grad[:, 3], 0.5 * parameters[B][:, 3].detach())
    assert not parameters[A].grad[:3].any() and not parameters[B].grad[:, :3].any()


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["strategy.lora_aggregation=hetlora"], "strategy.lora_aggregation"),
        (["model.lora.client_ranks=[4, 8]"], "strategy.lora_aggregation"),
        (["model.lora.client_ranks=[4, 16]", "strategy.lora_aggregation=flexlora"], "model.lora.client_ranks"),
        (["model.lora.client_ranks=[4, eight]", "strategy.lora_aggregation=flexlora"], "model.lora.client_ranks"),
        (
            ["model.lora.client_ranks=[4, 8]", "strategy.lora_aggregation=flexlora", "strategy.name=median"],
            "strategy.lora_aggregation",
        ),
        (
            ["model.lora.client_ranks=[4, 8]", "strategy.lora_aggregation=hetlora", "strategy.name=scaffold"],
            "strategy.lora_aggregation",
        ),
        (
            ["model.lora.client_ranks=[4, 8]", "strategy.lora_aggregation=hetlora", "strategy.name=dp_fixed_clipping"],
            "strategy.lora_aggregation",
        ),
        (
            ["model.lora.client_ranks=[4, 8]", "strategy.lora_aggregation=hetlora", "strategy.name=norm_bounding"],
            "strategy.lora_aggregation",
        ),
        (
            ["model.lora.client_ranks=[4, 8]", "strategy.lora_aggregation=hetlora", "execution.mode=batched"],
            "execution.mode",
        ),
        (
            ["model.lora.client_ranks=[4, 8]", "strategy.lora_aggregation=hetlora", "client.objective=dpo"],
            "client.objective",
        ),
        (
            [
                "model.lora.client_ranks=[4, 8]",
                "strategy.lora_aggregation=hetlora",
                "client.local_dp=true",
                "client.dp.mode=dpsgd",
            ],
            "client.dp.mode",
        ),
        (["strategy.hetlora.prune_below=1.5"], "strategy.hetlora.prune_below"),
    ],
)
def test_what_client_ranks_do_not_combine_with_is_one_line(overrides, key):
    with pytest.raises(ConfigError) as refused:
        load_config(None, overrides)
    message = str(refused.value)
    assert message.startswith(f"{key}:") and "\n" not in message


def test_a_component_above_a_clients_rank_stays_zero_through_training(tiny_model_dir, tmp_path):
    """The claim flb.adapters.ranks rests on: a component whose B column and A row are zero gets no gradient, so a
    client of rank 2 in a rank-8 adapter trains exactly a rank-2 adapter (with trl's AdamW)."""
    from tests.tiny_model import tiny_run_overrides

    config = load_config(
        None,
        [
            *tiny_run_overrides(tiny_model_dir, tmp_path),
            "num_clients=1",
            "clients_per_round=1",
            "model.lora.client_ranks=[2]",
            "strategy.lora_aggregation=flexlora",
        ],
    )
    from assembly.build import build_data, build_model
    from assembly.clients import build_client
    from flb.model.load import get_adapter_state

    shards, _ = build_data(config)
    tokenizer, model = build_model(config)
    client = build_client(config, 0, shards[0], model, tokenizer, work_dir=tmp_path, private_dir=tmp_path / "private")
    global_adapter = {name: t.clone() + 0.01 for name, t in get_adapter_state(model).items()}  # every component set
    update = client.fit(global_adapter, 1)
    trained = get_adapter_state(model)
    assert rank_of(update.tensors) == 2
    for name, tensor in trained.items():
        tail = tensor[2:] if ".lora_A." in name else tensor[:, 2:]
        assert not tail.any(), name
    assert any(not torch.equal(update.tensors[n], at_rank(global_adapter, 2)[n]) for n in update.tensors)


RANKS = ["model.lora.r=16", "model.lora.client_ranks=[4, 8, 16]", "num_clients=3", "clients_per_round=3"]


@pytest.fixture(scope="module")
def hetlora_runs(tiny_model_dir, tmp_path_factory):
    """A hetlora run of clients at ranks 4, 8 and 16 in worker processes, pruning readily, the ledger on; and, from a
    copy of it after round 1, the same run resumed in process."""
    from tests.snapshots import run_and_resume_after_round_1
    from tests.tiny_model import tiny_run_overrides

    output = tmp_path_factory.mktemp("hetlora")
    overrides = [
        *tiny_run_overrides(tiny_model_dir, output),
        *RANKS,
        "num_rounds=3",
        "chain_record=true",
        "strategy.lora_aggregation=hetlora",
        "strategy.hetlora.prune_below=0.9",
        "execution.mode=processes",
        "execution.workers=2",
    ]
    return run_and_resume_after_round_1(
        load_config(None, overrides), output / "after-round-1", ("execution.mode=sequential",)
    )


def rows(run_dir: Path, kind: str) -> list[dict]:
    return [row for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if row["kind"] == kind]


def test_each_client_sends_its_own_rank_and_a_pruned_component_stays_zero(hetlora_runs):
    from safetensors.torch import load_file

    run_dir, _ = hetlora_runs
    global_adapter = load_file(str(run_dir / "round_3" / "adapter_model.safetensors"))
    assert rank_of(global_adapter) == 16
    for round in (1, 2, 3):
        sent = {k: load_file(str(run_dir / f"round_{round}" / "updates" / f"client_{k}.safetensors")) for k in range(3)}
        assert [rank_of(sent[k]) for k in range(3)] == [4, 8, 16]
    last = sent[2]  # rank 16, pruning readily: by round 3 it has dropped components for good
    active = max(i for i in range(16) if any(t[i].any() for n, t in last.items() if ".lora_A." in n)) + 1
    assert active < 16
    for name, tensor in last.items():
        assert not (tensor[active:] if ".lora_A." in name else tensor[:, active:]).any()


def test_a_hetlora_run_resumed_in_process_ends_on_the_worker_runs_adapter(hetlora_runs):
    in_workers, resumed = hetlora_runs
    assert rows(resumed, "round")[-1]["global_digest"] == rows(in_workers, "round")[-1]["global_digest"]


def test_the_audit_recomputes_every_round_from_the_rank_sized_update_files(hetlora_runs, capsys):
    from chain import explorer

    run_dir, _ = hetlora_runs
    assert explorer.main([str(run_dir), "--verify", "--recompute"]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "0 problems" in out and "not recomputable" not in out
    # an update file cut to another rank is caught: the recorded digest no longer matches
    from safetensors.torch import load_file, save_file

    path = run_dir / "round_2" / "updates" / "client_1.safetensors"
    original = path.read_bytes()
    save_file(
        padded(load_file(str(path)), load_file(str(run_dir / "round_1" / "adapter_model.safetensors"))), str(path)
    )
    try:
        assert explorer.main([str(run_dir), "--verify", "--recompute"]) != 0
        assert "client 1" in capsys.readouterr().out
    finally:
        path.write_bytes(original)
