"""flb.model.sft_settings: the learning rate across rounds; the loss on target positions."""

from __future__ import annotations

import math

import pytest

from flb.config import SFTSettings
from flb.model.sft_settings import round_learning_rate, sft_config


def test_constant_is_the_same_every_round():
    settings = SFTSettings(learning_rate=2e-4)
    assert [round_learning_rate(settings, r, 5) for r in range(1, 6)] == [2e-4] * 5


def test_cosine_over_rounds_goes_from_learning_rate_to_min_learning_rate():
    """FlowerTune's protocol: 5e-5 in the first round to 1e-6 in the last, half-way at the middle round."""
    settings = SFTSettings(learning_rate=5e-5, lr_schedule="cosine_over_rounds", min_learning_rate=1e-6)
    rates = [round_learning_rate(settings, r, 201) for r in range(1, 202)]
    assert rates[0] == pytest.approx(5e-5) and rates[-1] == pytest.approx(1e-6)
    assert rates[100] == pytest.approx((5e-5 + 1e-6) / 2)
    assert rates[50] == pytest.approx(1e-6 + 0.5 * 4.9e-5 * (1 + math.cos(math.pi / 4)))
    assert all(a > b for a, b in zip(rates, rates[1:]))


def test_cosine_over_one_round_is_the_learning_rate():
    settings = SFTSettings(learning_rate=1e-3, lr_schedule="cosine_over_rounds", min_learning_rate=0.0)
    assert round_learning_rate(settings, 1, 1) == 1e-3


def test_the_target_scored_loss_and_gradients_are_trls(tiny_model_dir, tmp_path):
    """In fp32, on a batch of trl's own collation with prompt tokens and padding: the loss computed on the target
    positions only equals trl's fused-kernel loss over every position, and so do the LoRA gradients."""
    from trl import SFTTrainer

    from flb.config import LoraSettings, ModelSettings
    from flb.model.load import adapter_parameters, add_lora, load_base_model, load_tokenizer
    from flb.model.sft_settings import quiet_trainer, to_dataset

    settings = ModelSettings(model_path=str(tiny_model_dir), lora=LoraSettings(dropout=0.0))
    tokenizer, model = load_tokenizer(settings), add_lora(load_base_model(settings), settings)
    records = [
        {
            "prompt": [{"role": "user", "content": f"What is {i} + {i}?" + " Think." * i}],
            "completion": [{"role": "assistant", "content": str(2 * i)}],
        }
        for i in range(4)
    ]
    args = sft_config(
        SFTSettings(max_length=96),
        max_steps=1,
        output_dir=tmp_path,
        use_cpu=True,
        seed=0,
    )
    trainer = quiet_trainer(model, tokenizer, args, to_dataset(records))
    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["attention_mask"] == 0).any() and (batch["labels"][batch["attention_mask"] == 1] == -100).any()
    for parameter in adapter_parameters(model).values():  # B = 0 would leave A without a gradient
        torch_nudge(parameter)
    losses, gradients = [], []
    for compute_loss in (trainer.compute_loss, lambda m, b: SFTTrainer.compute_loss(trainer, m, b)):
        model.zero_grad()
        loss = compute_loss(model, dict(batch))
        loss.backward()
        losses.append(loss.item())
        gradients.append({name: p.grad.clone() for name, p in adapter_parameters(model).items()})
    assert type(trainer).__name__ == "TargetScoringSFTTrainer"
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    for name, gradient in gradients[0].items():
        assert gradient.abs().max() > 0
        assert (gradient - gradients[1][name]).abs().max() < 1e-6


def torch_nudge(parameter) -> None:
    import torch

    with torch.no_grad():
        parameter.add_(0.01 * torch.randn_like(parameter))


def test_on_the_cpu_training_is_float32_unless_asked(tmp_path):
    """trl's default bf16 autocast is slow on a CPU without bf16 units; a GPU keeps trl's default, and
    sft.training_arguments can ask for bf16 anywhere."""
    settings = dict(max_steps=1, output_dir=tmp_path, seed=0)
    assert sft_config(SFTSettings(), use_cpu=True, **settings).bf16 is False
    assert sft_config(SFTSettings(training_arguments={"bf16": True}), use_cpu=True, **settings).bf16 is True
