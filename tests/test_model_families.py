"""Each supported architecture family as a tiny random model: which modules auto and all-linear put LoRA on, a
federated round on it, and an adapter and a merged model that plain transformers and peft load. Also the chat
template a tokenizer without one gets, and the error for an architecture auto does not know."""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from flb.config import ModelSettings, load_config
from flb.errors import ModelError
from flb.model.load import add_lora, load_base_model
from flb.model.target_modules import resolved_target_modules
from tests.tiny_model import TINY_FAMILIES, save_tiny_family, tiny_run_overrides

FAMILIES = list(TINY_FAMILIES)
LAYERS = 2  # every tiny model has two decoder layers
TASKS_FILE = Path(__file__).resolve().parent.parent / "examples" / "datasets" / "flb_tasks.jsonl"

_QKVO = ["k_proj", "o_proj", "q_proj", "v_proj"]
_QKVO_AND_MLP = sorted(_QKVO + ["down_proj", "gate_proj", "up_proj"])
# Written out here, not read from flb.model.target_modules, so a wrong entry there fails these tests.
AUTO = {
    "llama": _QKVO,
    "mistral": _QKVO,
    "qwen2": _QKVO,
    "qwen3": _QKVO,
    "gemma2": _QKVO,
    "gemma3": _QKVO,
    "phi3": ["o_proj", "qkv_proj"],
    "gpt2": ["c_attn"],
}
ALL_LINEAR = {
    "llama": _QKVO_AND_MLP,
    "mistral": _QKVO_AND_MLP,
    "qwen2": _QKVO_AND_MLP,
    "qwen3": _QKVO_AND_MLP,
    "gemma2": _QKVO_AND_MLP,
    "gemma3": _QKVO_AND_MLP,
    "phi3": ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"],
    "gpt2": ["c_attn", "c_fc", "c_proj", "c_proj"],
}  # per layer: c_proj is attention's and the MLP's output
# One round, two clients, one local step of two examples each, a two-example held-out set: the least that exercises
# everything (the 49152-token output layer is most of the cost).
ONE_QUICK_ROUND = [
    "num_rounds=1",
    "local_steps=1",
    "sft.batch_size=2",
    "eval.size=2",
    "eval.max_new_tokens=2",
    f"dataset_name={TASKS_FILE}",
]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and lose 10-100x on every small op when other processes share
    the cores (OpenMP threads wait for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory):
    """family -> its tiny model's folder, made once for this module."""
    made = {}

    def get(family: str) -> Path:
        if family not in made:
            made[family] = save_tiny_family(family, tmp_path_factory.mktemp(family))
        return made[family]

    return get


@pytest.fixture(scope="module")
def family_run(family_dir, tmp_path_factory):
    """family -> the run directory of one quick round on its tiny model, exported merged; run once for this module."""
    import assembly

    runs = {}

    def get(family: str) -> Path:
        if family not in runs:
            overrides = tiny_run_overrides(family_dir(family), tmp_path_factory.mktemp(f"{family}-runs"))
            runs[family] = assembly.run(load_config(None, overrides + ONE_QUICK_ROUND), export_merged=True)
        return runs[family]

    return get


def lora_layers(peft_model) -> dict[str, object]:
    """The modules peft put LoRA on, by their path in the base model."""
    from peft.tuners.lora import LoraLayer

    return {
        name.removeprefix("base_model.model."): module
        for name, module in peft_model.named_modules()
        if isinstance(module, LoraLayer)
    }


def with_lora(model_dir: Path, target_modules):
    settings = ModelSettings(model_path=str(model_dir), target_modules=target_modules)
    return add_lora(load_base_model(settings), settings)


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_puts_lora_on_the_attention_projections(family_dir, family):
    model = with_lora(family_dir(family), "auto")
    assert Counter(name.rsplit(".", 1)[-1] for name in lora_layers(model)) == {name: LAYERS for name in AUTO[family]}
    assert resolved_target_modules(model) == AUTO[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_all_linear_puts_lora_on_every_linear_layer_but_the_head(family_dir, family):
    from transformers.pytorch_utils import Conv1D

    base = load_base_model(ModelSettings(model_path=str(family_dir(family))))
    head = base.get_output_embeddings()
    linear = {
        name
        for name, module in base.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head
    }
    model = add_lora(base, ModelSettings(model_path=str(family_dir(family)), target_modules="all-linear"))
    assert set(lora_layers(model)) == linear
    assert Counter(name.rsplit(".", 1)[-1] for name in linear) == Counter(ALL_LINEAR[family] * LAYERS)
    assert resolved_target_modules(model) == sorted(set(ALL_LINEAR[family]))  # the kinds, not peft's full paths


@pytest.mark.parametrize("family", FAMILIES)
def test_a_round_completes_and_the_run_keeps_the_resolved_modules(family_run, family):
    run = family_run(family)
    assert json.loads((run / "config.json").read_text())["model"]["target_modules"] == AUTO[family]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    clients = [row for row in rows if row["kind"] == "client"]
    assert len(clients) == 2 and all(math.isfinite(row["train_loss"]) for row in clients)
    assert rows[-1]["round"] == 1 and rows[-1]["num_clients"] == 2 and math.isfinite(rows[-1]["eval_loss"])


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_and_merged_model_load_with_plain_transformers_and_peft(family_dir, family_run, family):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run, model_dir = family_run(family), family_dir(family)
    ids = torch.tensor([[1, 520, 3001, 77, 9, 4000, 12, 2]])
    base_logits = logits(AutoModelForCausalLM.from_pretrained(model_dir), ids)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), run / "final_adapter")
    assert sorted(adapted.peft_config["default"].target_modules) == AUTO[family]
    saved = load_file(run / "final_adapter" / "adapter_model.safetensors")
    assert any(tensor.abs().max() > 0 for name, tensor in saved.items() if "lora_B" in name)  # it was trained
    adapted_logits = logits(adapted, ids)
    merged = AutoModelForCausalLM.from_pretrained(run / "merged")
    assert type(merged) is type(adapted.get_base_model()) and not lora_layers(merged)
    merged_logits = logits(merged, ids)
    assert (adapted_logits - base_logits).abs().max() > 1e-2  # so the comparison below can tell them apart
    torch.testing.assert_close(merged_logits, adapted_logits, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def no_template_dir(family_dir, tmp_path_factory):
    """The tiny Llama with its tokenizer's chat template removed, as a base model's tokenizer comes."""
    target = tmp_path_factory.mktemp("no-template")
    for path in family_dir("llama").iterdir():
        if path.name != "chat_template.jinja":
            shutil.copy(path, target / path.name)
    config = json.loads((target / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    return target


def test_a_tokenizer_without_chat_template_gets_the_fallback(no_template_dir, caplog):
    from flb.model.load import FALLBACK_CHAT_TEMPLATE, load_tokenizer

    with caplog.at_level(logging.WARNING, logger="flb.model.load"):
        tokenizer = load_tokenizer(ModelSettings(model_path=str(no_template_dir)))
    assert tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE
    assert [r.getMessage() for r in caplog.records if "FALLBACK_CHAT_TEMPLATE" in r.getMessage()] == [
        f"model.model_path: the tokenizer of {str(no_template_dir)!r} has no chat template; using FLB's fallback "
        "(flb.model.load.FALLBACK_CHAT_TEMPLATE: <|user|> and <|assistant|> turns, answers end with <|im_end|>)"
    ]
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Compute 2 + 2."}]
    answer = [{"role": "assistant", "content": "4"}]
    assert tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|><|system|>\nBe brief.\n<|user|>\nCompute 2 + 2.\n<|assistant|>\n"
    )
    # trl's completion-only loss: the prompt's tokens are a prefix, and the rest is the answer and EOS
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"]
    chat_ids = tokenizer.apply_chat_template(prompt + answer, return_dict=True)["input_ids"]
    assert chat_ids[: len(prompt_ids)] == prompt_ids
    assert chat_ids[len(prompt_ids) :] == tokenizer("4", add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]


def test_a_tokenizer_with_its_own_chat_template_keeps_it(family_dir):
    from flb.model.load import FALLBACK_CHAT_TEMPLATE, load_tokenizer

    tokenizer = load_tokenizer(ModelSettings(model_path=str(family_dir("llama"))))
    assert tokenizer.chat_template != FALLBACK_CHAT_TEMPLATE and "<|im_start|>" in tokenizer.chat_template


def test_a_round_completes_with_the_fallback_template(no_template_dir, tmp_path):
    import assembly

    overrides = tiny_run_overrides(no_template_dir, tmp_path / "runs") + ONE_QUICK_ROUND
    run = assembly.run(load_config(None, overrides))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["round"] == 1 and rows[-1]["num_clients"] == 2
    assert all(math.isfinite(row["train_loss"]) for row in rows if row["kind"] == "client")


def test_auto_on_an_unknown_architecture_is_a_one_line_model_error(family_dir):
    base = load_base_model(ModelSettings(model_path=str(family_dir("llama"))))
    base.config.model_type = "made_up_arch"
    with pytest.raises(ModelError) as info:
        add_lora(base, ModelSettings(target_modules="auto"))
    assert str(info.value).startswith(
        "model.target_modules: auto knows no attention projections for model_type 'made_up_arch'; list them"
    ) and "\n" not in str(info.value)
    assert len(lora_layers(add_lora(base, ModelSettings(target_modules="all-linear")))) == LAYERS * 7
