"""Arithmetic on adapter states and how LoRA factors are merged: pure functions over tensors, no I/O."""
