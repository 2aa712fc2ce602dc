"""The GPU presets in examples/configs/: each loads and validates as `--config FILE` would (no model is fetched),
keeps config.yaml's value for every key it leaves out, and says truly what `auto` puts LoRA on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from flb.config import config_from_dict, load_config
from flb.model.sft_settings import check_training_arguments
from flb.model.target_modules import requested_target_modules

PRESETS_DIR = Path(__file__).resolve().parent.parent / "examples" / "configs"
PRESETS = sorted(PRESETS_DIR.glob("*.yaml"))
# file -> (hub id, the model's config.model_type)
EXPECTED = {
    "llama-3.1-8b.yaml": ("meta-llama/Llama-3.1-8B-Instruct", "llama"),
    "qwen2.5-7b.yaml": ("Qwen/Qwen2.5-7B-Instruct", "qwen2"),
    "phi-3-mini.yaml": ("microsoft/Phi-3-mini-4k-instruct", "phi3"),
    "gemma-2-9b.yaml": ("google/gemma-2-9b-it", "gemma2"),
    "mistral-7b.yaml": ("mistralai/Mistral-7B-Instruct-v0.3", "mistral"),
}


def test_there_is_one_preset_per_family():
    assert [path.name for path in PRESETS] == sorted(EXPECTED)


@pytest.mark.parametrize("path", PRESETS, ids=lambda path: path.name)
def test_preset_loads_and_validates(path):
    config = load_config(path)
    assert config.model.model_path == EXPECTED[path.name][0]
    assert (config.model.quantization, config.model.device_map, config.model.dtype) == (4, "cuda", "bfloat16")
    assert config.model.target_modules == "auto"
    check_training_arguments(config.sft, use_cpu=True)  # the names and types; SFTConfig refuses use_cpu=False here


def merged(defaults: dict, overrides: dict) -> dict:
    """`defaults` with `overrides` laid over it, section by section."""
    result = dict(defaults)
    for key, value in overrides.items():
        result[key] = merged(defaults[key], value) if isinstance(defaults.get(key), dict) else value
    return result


@pytest.mark.parametrize("path", PRESETS, ids=lambda path: path.name)
def test_preset_keeps_config_yaml_for_every_key_it_leaves_out(path):
    written = yaml.safe_load(path.read_text())
    assert load_config(path) == config_from_dict(merged(load_config().to_dict(), written))
    assert set(written) == {"model", "sft", "eval"}  # a preset sets the model and what its memory needs, no more


@pytest.mark.parametrize("path", PRESETS, ids=lambda path: path.name)
def test_preset_comments_say_what_auto_resolves_to_and_the_memory_it_needs(path):
    text = path.read_text()
    commented = re.search(r"^  target_modules: auto +# (.+)$", text, re.MULTILINE).group(1)
    names = re.findall(r"\b[a-z]+_proj\b", commented)
    assert names == requested_target_modules("auto", EXPECTED[path.name][1])
    assert re.search(r"^# GPU memory: ~\d+ GB, an ESTIMATE from the parameter count", text, re.MULTILINE)
    assert f"--config examples/configs/{path.name}" in text


FLOWERTUNE_DIR = PRESETS_DIR.parent / "flowertune"
# domain -> (its dataset on the hub, clients, clients per round): the leaderboard's partitions and fractions
FLOWERTUNE = {
    "general_nlp": ("vicgalle/alpaca-gpt4", 20, 2),
    "finance": ("FinGPT/fingpt-sentiment-train", 50, 5),
    "medical": ("medalpaca/medical_meadow_medical_flashcards", 20, 2),
    "code": ("flwrlabs/code-alpaca-20k", 10, 2),
}


def test_there_is_one_flowertune_file_per_domain():
    assert sorted(path.stem for path in FLOWERTUNE_DIR.glob("*.yaml")) == sorted(FLOWERTUNE)


@pytest.mark.parametrize("domain", sorted(FLOWERTUNE))
def test_flowertune_files_hold_the_leaderboards_fixed_protocol(domain):
    from flb.model.sft_settings import round_learning_rate

    config = load_config(FLOWERTUNE_DIR / f"{domain}.yaml")
    assert (config.dataset_name, config.num_clients, config.clients_per_round) == FLOWERTUNE[domain]
    assert config.partition.method == "iid" and config.num_rounds == 200
    assert (config.model.model_path, config.model.quantization, config.model.device_map) == (
        "mistralai/Mistral-7B-v0.3",
        4,
        "cuda",
    )
    assert (config.model.lora.r, config.model.lora.alpha) == (32, 64)
    assert (config.sft.max_length, config.sft.batch_size, config.local_steps) == (512, 16, 10)
    rates = [round_learning_rate(config.sft, r, config.num_rounds) for r in (1, 200)]
    assert rates == pytest.approx([5e-5, 1e-6])
    assert config.sft.lr_schedule == "cosine_over_rounds" and config.strategy.name == "fedavg"
    check_training_arguments(config.sft, use_cpu=True)
