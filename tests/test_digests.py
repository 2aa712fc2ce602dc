from __future__ import annotations

import torch
from safetensors.torch import save_file

from flb.audit.digests import adapter_digest, adapter_file_digest, records_digest


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


def test_the_adapter_config_digest_is_the_same_in_every_process():
    """peft writes target_modules (a set) in hash order: the digest must not depend on PYTHONHASHSEED."""
    import os
    import subprocess
    import sys

    code = (
        "from peft import LoraConfig; from flb.audit.digests import adapter_config_digest as d; "
        "print(d(LoraConfig(r=8, lora_alpha=16, target_modules=['q_proj', 'v_proj', 'k_proj', 'o_proj'], "
        "task_type='CAUSAL_LM')))"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONHASHSEED": seed}
        )
        for seed in ("1", "2", "3")
    ]
    digests = {process.communicate()[0].strip() for process in processes}
    assert [process.returncode for process in processes] == [0, 0, 0]
    assert len(digests) == 1 and len(digests.pop()) == 64
