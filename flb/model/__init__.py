"""The base model and its LoRA: loading (quantised where asked), the modules LoRA targets, trl's SFT settings."""
