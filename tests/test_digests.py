from __future__ import annotations

import torch
from safetensors.torch import save_file

from flb.audit.digests import adapter_config_digest, adapter_digest, adapter_file_digest, records_digest


def test_digest_is_order_independent_and_sensitive_to_every_part(tmp_path):
    state = {"b": torch.ones(2, 3), "a": torch.zeros(4)}
    digest = adapter_digest(state)
    assert digest == adapter_digest(dict(reversed(list(state.items()))))
    assert digest != adapter_digest({"b": torch.ones(3, 2), "a": torch.zeros(4)})  # shape
    assert digest != adapter_digest({"b": torch.ones(2, 3, dtype=torch.float64), "a": torch.zeros(4)})  # dtype
    assert digest != adapter_digest({"c": torch.ones(2, 3), "a": torch.zeros(4)})  # name
    changed = {"b": torch.ones(2, 3), "a": torch.tensor([0.0, 0.0, 0.0, 1e-7])}
    assert digest != adapter_digest(changed)
    save_file(state, str(tmp_path / "adapter_model.safetensors"))
    assert adapter_file_digest(tmp_path) == digest


def test_records_digest_depends_on_content_and_order():
    assert records_digest([{"a": 1}, {"b": 2}]) != records_digest([{"b": 2}, {"a": 1}])
    assert records_digest([{"a": 1, "c": 2}]) == records_digest([{"c": 2, "a": 1}])


def test_the_adapter_config_digest_is_the_same_in_every_process(tmp_path):
    """peft keeps target_modules as a set and writes it in hash order, which PYTHONHASHSEED changes from process to
    process: the adapter_config.json peft writes here and the same one as another process writes it (the modules in
    another order) have one digest; a changed value (lora_alpha) changes it."""
    import json

    from peft import LoraConfig

    LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "k_proj", "o_proj"]).save_pretrained(tmp_path)
    written = json.loads((tmp_path / "adapter_config.json").read_text())
    modules = written["target_modules"]

    def digest_of(**changes) -> str:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({**written, **changes}))
        return adapter_config_digest(folder)

    assert adapter_config_digest(tmp_path) == digest_of(target_modules=[*modules[1:], modules[0]])
    assert adapter_config_digest(tmp_path) != digest_of(lora_alpha=32)
