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


def tiny_run_overrides(model_dir: Path, output_dir: Path) -> list[str]:
    """--set overrides for a fast federated run on the tiny model (the `tiny_overrides` fixture's)."""
    return [f"model.model_path={model_dir}", f"output_dir={output_dir}", "num_clients=2", "clients_per_round=2",
            "num_rounds=2", "local_steps=4", "eval.size=12", "eval.max_new_tokens=4", "sft.learning_rate=0.01",
            "sft.max_length=96", "chain_record=false", "model.lora.dropout=0.0"]
