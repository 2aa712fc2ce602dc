"""Which modules get LoRA: `model.target_modules: auto | all-linear | [names]`.

`auto` picks the attention projections by the model's architecture (`config.model_type`); the names differ
between families, and a wrong guess either fails (GPT-2 has no q_proj) or silently adapts less than meant
(Phi-3 fuses q, k and v into one `qkv_proj`). `all-linear` is peft's own spelling: every linear layer but the
output head. Either way peft writes the names it matched into the LoRA config, and the run saves that list.
"""

from __future__ import annotations

from flb.errors import ModelError

_QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]

# model_type -> the attention projections' module names
ATTENTION_PROJECTIONS = {
    "llama": _QKVO,
    "mistral": _QKVO,
    "qwen2": _QKVO,
    "qwen3": _QKVO,
    "gemma": _QKVO,
    "gemma2": _QKVO,
    "gemma3": _QKVO,
    "gemma3_text": _QKVO,
    "phi3": ["qkv_proj", "o_proj"],  # fused q, k, v
    "gpt2": ["c_attn"],  # fused q, k, v (a Conv1D); GPT-2's `c_proj` names the MLP's output layer too
}


def requested_target_modules(target_modules: str | list[str], model_type: str) -> str | list[str]:
    """What to hand peft's LoraConfig: the architecture's attention projections for `auto`, else as configured."""
    if target_modules != "auto":
        return target_modules if isinstance(target_modules, str) else list(target_modules)
    if model_type in ATTENTION_PROJECTIONS:
        return list(ATTENTION_PROJECTIONS[model_type])
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    if model_type in PEFT_DEFAULTS:  # peft's own default for the architecture (usually q and v only)
        return list(PEFT_DEFAULTS[model_type])
    raise ModelError(
        f"model.target_modules: auto knows no attention projections for model_type {model_type!r}; "
        "list them (e.g. --set 'model.target_modules=[q_proj,v_proj]') or use all-linear"
    )


def check_target_modules(model, target_modules: str | list[str]) -> None:
    """Every name listed must match a module of `model` as peft matches it (the whole path, or its last parts after a
    dot); peft itself only needs one of them to match and silently leaves the others out. A ModelError names the
    names that match nothing and the linear layers the model has."""
    if isinstance(target_modules, str):
        return
    paths = [path for path, _ in model.named_modules()]
    unmatched = [name for name in target_modules if not any(p == name or p.endswith("." + name) for p in paths)]
    if unmatched:
        raise ModelError(
            f"model.target_modules: {unmatched} match no module of this {model.config.model_type} model; "
            f"its linear layers: {', '.join(linear_layer_names(model))}; list some of those, or use auto "
            "or all-linear"
        )


def linear_layer_names(model) -> list[str]:
    """The last part of the path of every linear layer (torch's Linear, quantized ones included, and GPT-2's Conv1D),
    sorted."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return sorted(
        {
            path.rsplit(".", 1)[-1]
            for path, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, Conv1D))
        }
    )


def resolved_target_modules(peft_model) -> list[str]:
    """The module names peft put LoRA on, sorted. peft keeps a set, and expands all-linear into every layer's full
    path; its last parts name the same layers (peft matches a name at the end of a path)."""
    return sorted({path.rsplit(".", 1)[-1] for path in peft_model.peft_config["default"].target_modules})
