"""The client-side parts of FedProx and SCAFFOLD (flb/local_objective.py): checked by hand on a 2-parameter model
(y = w x + b, loss (y - t)^2, x = 2, t = 1) stepped by SGD through the same hook the client installs, then on the
tiny model through the client's trl trainer."""

from __future__ import annotations

import pytest
import torch

import assembly
from client.privacy import NoPrivacy
from client.sft import SFTClient
from flb.config import load_config
from flb.local_objective import LocalObjective
from flb.model.load import adapter_parameters, get_adapter_state

LEARNING_RATE = 0.1


def two_parameter_model(w: float, b: float) -> torch.nn.Linear:
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(w)
        model.bias.fill_(b)
    return model


def named(model: torch.nn.Linear) -> dict:
    return {"w": model.weight, "b": model.bias}


def values(w: float, b: float) -> dict:
    return {"w": torch.tensor([[w]]), "b": torch.tensor([b])}


def train(model: torch.nn.Linear, correction, steps: int) -> None:
    """SGD on one example, the correction hooked before each step as client.dpsgd hooks it."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    optimizer.register_step_pre_hook(lambda *_: correction.apply())
    for _ in range(steps):
        optimizer.zero_grad()
        ((model(torch.tensor([[2.0]])) - 1.0) ** 2).sum().backward()
        optimizer.step()


def assert_values(model: torch.nn.Linear, w: float, b: float) -> None:
    assert model.weight.item() == pytest.approx(w, abs=1e-6) and model.bias.item() == pytest.approx(b, abs=1e-6)


def test_fedprox_adds_mu_times_the_distance_to_the_global_adapter():
    """theta = (0.5, -0.25), global (0.1, 0.2), mu = 0.3: residual -0.25, data gradient (-1.0, -0.5), proximal
    gradient 0.3 (0.4, -0.45) = (0.12, -0.135), so the step moves by -0.1 (-0.88, -0.635)."""
    model = two_parameter_model(0.5, -0.25)
    train(model, LocalObjective(proximal_mu=0.3).correction(named(model), values(0.1, 0.2), {}, {}), steps=1)
    assert_values(model, 0.588, -0.1865)


def test_scaffold_corrects_each_step_by_c_minus_c_i_and_its_variate_is_option_two():
    """x = (0.5, -0.25), c = (0.2, -0.1), c_i = (0.05, 0.3): c - c_i = (0.15, -0.4).
    Step 1: gradient (-1.0, -0.5) -> y = (0.585, -0.16). Step 2: residual 0.01, gradient (0.04, 0.02) -> y =
    (0.566, -0.122). c_i+ = mean gradient (-0.48, -0.24) = c_i - c + (x - y) / (K eta) under SGD (Option II)."""
    objective, server, client = LocalObjective(scaffold=True), values(0.2, -0.1), values(0.05, 0.3)
    model = two_parameter_model(0.5, -0.25)
    correction = objective.correction(named(model), values(0.5, -0.25), server, client)
    train(model, correction, steps=2)
    assert_values(model, 0.566, -0.122)
    delta, new_variate = objective.returned(correction, server, client)
    option_two = {
        n: client[n] - server[n] + (values(0.5, -0.25)[n] - named(model)[n].detach()) / (2 * LEARNING_RATE)
        for n in server
    }
    for name, expected in (("w", (-0.48, -0.53)), ("b", (-0.24, -0.54))):
        assert new_variate[name].item() == pytest.approx(expected[0], abs=1e-6)
        assert option_two[name].item() == pytest.approx(expected[0], abs=1e-6)
        assert delta[name].item() == pytest.approx(expected[1], abs=1e-6)


def test_a_client_without_a_variate_yet_starts_from_zero():
    objective, server = LocalObjective(scaffold=True), values(0.2, -0.1)
    model = two_parameter_model(0.5, -0.25)
    correction = objective.correction(named(model), values(0.5, -0.25), server, {})
    train(model, correction, steps=1)
    assert_values(model, 0.5 + 0.1 * (1.0 - 0.2), -0.25 + 0.1 * (0.5 + 0.1))
    delta, new_variate = objective.returned(correction, server, {})
    assert delta["w"].item() == new_variate["w"].item() == pytest.approx(-1.0)


@pytest.mark.parametrize(
    "overrides, mu, scaffold",
    [
        (["strategy.name=fedprox", "strategy.fedprox.mu=0.5"], 0.5, False),
        (["strategy.name=dp_fixed_clipping", "strategy.wraps=fedprox", "strategy.fedprox.mu=0.5"], 0.5, False),
        (["strategy.name=scaffold", "strategy.fedprox.mu=0.5"], 0.0, True),
        (["strategy.name=fedavg"], 0.0, False),
    ],
)
def test_the_objective_follows_the_aggregating_strategy(overrides, mu, scaffold):
    assert LocalObjective.of(load_config(None, overrides).strategy) == LocalObjective(mu, scaffold)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tmp_path_factory):
    config = load_config(
        None,
        [
            f"model.model_path={tiny_model_dir}",
            "num_clients=2",
            "clients_per_round=2",
            "sft.max_length=96",
            "sft.learning_rate=0.01",
            "model.lora.dropout=0.0",
            "local_steps=4",
            "eval.size=8",
        ],
    )
    shards, _ = assembly.build_data(config)
    tokenizer, model = assembly.build_model(config)
    return config, shards[0][:40], tokenizer, model, tmp_path_factory.mktemp("objective")


def fitted(tiny, name: str, objective: LocalObjective, start: dict, extras: dict):
    config, shard, tokenizer, model, work = tiny
    client = SFTClient(
        client_id=0,
        records=shard,
        model=model,
        tokenizer=tokenizer,
        settings=config.sft,
        local_steps=config.local_steps,
        num_rounds=config.num_rounds,
        seed=config.seed,
        work_dir=work,
        private_dir=work / name,
        privacy=NoPrivacy(),
        objective=objective,
    )
    return client, client.fit(start, 1, extras)


def distance(update, start) -> float:
    return sum(float((update.tensors[n] - start[n]).pow(2).sum()) for n in start) ** 0.5


def test_the_trainer_applies_the_correction_before_every_step(tiny):
    """Through trl's trainer: a strong proximal term keeps the adapter nearer the global one, SCAFFOLD's c changes
    the path and comes back as delta c_i = the mean gradient (c_i was 0), which the client keeps privately."""
    model = tiny[3]
    start = get_adapter_state(model)
    _, plain = fitted(tiny, "plain", LocalObjective(), start, {})
    _, proximal = fitted(tiny, "proximal", LocalObjective(proximal_mu=100.0), start, {})
    assert distance(proximal, start) < 0.5 * distance(plain, start)
    c = {name: torch.full_like(t, 0.05) for name, t in start.items()}
    client, scaffold = fitted(tiny, "scaffold", LocalObjective(scaffold=True), start, c)
    assert scaffold.digest != plain.digest and plain.extras == {} and proximal.extras == {}
    assert set(scaffold.extras) == set(adapter_parameters(model)) == set(start)
    assert all(torch.isfinite(t).all() for t in scaffold.extras.values())
    assert any(t.abs().sum() > 0 for t in scaffold.extras.values())
    kept = client.private.latest()["tensors"]
    assert all(torch.equal(kept[n], scaffold.extras[n]) for n in start)
