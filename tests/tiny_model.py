"""Tiny random models (2 layers, hidden 64) with SmolLM2's real tokenizer, for tests and benchmarks: a Llama, and one
per supported architecture family built from that family's own transformers config class."""

from __future__ import annotations

from pathlib import Path


def save_tiny_llama(path: Path, num_layers: int = 2) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from flb.config import ModelSettings
    from flb.model.load import local_model_dir

    tokenizer = AutoTokenizer.from_pretrained(local_model_dir(ModelSettings()))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# family -> (transformers config class name, model class name, size arguments): 2 layers, hidden 64, 4 heads of 16
_SIZES = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)
_GEMMA_SIZES = dict(_SIZES, head_dim=16, query_pre_attn_scalar=16)  # Gemma's head_dim and scalar default to 256
TINY_FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", _SIZES),
    "mistral": ("MistralConfig", "MistralForCausalLM", _SIZES),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", _SIZES),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(_SIZES, head_dim=16)),  # Qwen3's head_dim defaults to 128
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(_SIZES, original_max_position_embeddings=512)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", _GEMMA_SIZES),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", _GEMMA_SIZES),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=64, n_inner=128, n_layer=2, n_head=4, n_positions=512)),
}


def save_tiny_family(family: str, path: Path, **config_overrides) -> Path:
    """A tiny random model of `family` (a key of TINY_FAMILIES), input and output embeddings tied, saved in float32
    with SmolLM2's tokenizer (so its vocabulary is SmolLM2's); `config_overrides` replace its config's sizes and
    defaults (e.g. num_hidden_layers=4)."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    from flb.config import ModelSettings
    from flb.model.load import local_model_dir

    config_name, model_name, sizes = TINY_FAMILIES[family]
    tokenizer = AutoTokenizer.from_pretrained(local_model_dir(ModelSettings()))
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**sizes, **config_overrides},
    )
    getattr(transformers, model_name)(config).to(torch.float32).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_run_overrides(model_dir: Path, output_dir: Path) -> list[str]:
    """--set overrides for a fast federated run on the tiny model (the `tiny_overrides` fixture's)."""
    return [
        f"model.model_path={model_dir}",
        f"output_dir={output_dir}",
        "num_clients=2",
        "clients_per_round=2",
        "num_rounds=2",
        "local_steps=3",
        "eval.size=12",
        "eval.max_new_tokens=4",
        "sft.learning_rate=0.01",
        "sft.max_length=96",
        "chain_record=false",
        "model.lora.dropout=0.0",
    ]
