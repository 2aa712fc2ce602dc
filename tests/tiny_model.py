"""A tiny random Llama (2 layers, hidden 64) with SmolLM2's real tokenizer, for tests and benchmarks."""
from __future__ import annotations

from pathlib import Path


def save_tiny_llama(path: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from flb.config import ModelSettings
    from flb.modeling import local_model_dir

    tokenizer = AutoTokenizer.from_pretrained(local_model_dir(ModelSettings()))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
