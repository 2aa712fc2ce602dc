"""Chat: the base model and base + a round's global adapter, side by side, tokens streamed as generated.

The base model is loaded once per process (st.cache_resource) and wrapped with LoRA once; choosing
another round only copies that round's adapter tensors into the wrapper."""

from __future__ import annotations

import json
import threading
from contextlib import nullcontext

import rundata
import streamlit as st


@st.cache_resource(show_spinner=False)
def load_model(_settings, settings_key: str):
    """(tokenizer, LoRA-wrapped base model, lock) for one set of model settings, shared by every session."""
    from flb.model.load import add_lora, load_base_model, load_tokenizer

    tokenizer = load_tokenizer(_settings)
    model = add_lora(load_base_model(_settings), _settings)
    model.eval()
    return tokenizer, model, threading.Lock()


@st.cache_resource(show_spinner=False, max_entries=16)
def load_adapter(path: str, modified: float):
    from safetensors.torch import load_file

    return load_file(path)


def stream_reply(tokenizer, model, lock, messages: list[dict], adapter, temperature: float, max_new_tokens: int):
    """Yield the reply's text as it is generated; `adapter` None means the bare base model."""
    import torch
    from transformers import TextIteratorStreamer

    from flb.model.load import set_adapter_state
    from flb.model.sft_settings import chat_prompt, left_padded

    prompt_ids = tokenizer(chat_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    input_ids, attention_mask = left_padded([prompt_ids], tokenizer.pad_token_id)
    device = next(model.parameters()).device
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    failures = []

    def generate():
        try:  # the lock keeps another session from swapping the adapter mid-reply
            with lock, torch.no_grad(), model.disable_adapter() if adapter is None else nullcontext():
                if adapter is not None:
                    set_adapter_state(model, adapter)
                model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    max_new_tokens=max_new_tokens,
                    streamer=streamer,
                    use_cache=True,
                    pad_token_id=tokenizer.pad_token_id,
                    **sampling,
                )
        except Exception as exc:  # re-raised below in the page's thread, where it can be shown
            failures.append(exc)
            streamer.end()

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
    if failures:
        raise failures[0]


def render(run: rundata.Run) -> None:
    st.title("Chat")
    rounds = run.rounds()
    if not rounds:
        st.info(f"Run {run.name} has saved no global adapter yet; come back when round 0 is written.")
        return
    picker, temperature_box, tokens_box, clear_box = st.columns([2, 2, 2, 1], vertical_alignment="bottom")
    round_ = picker.selectbox(
        "Global adapter",
        rounds,
        index=len(rounds) - 1,
        format_func=lambda r: f"round {r}" + (" (base: no update yet)" if r == 0 else ""),
    )
    temperature = temperature_box.slider("Temperature (0 = greedy)", 0.0, 1.5, 0.7, 0.1)
    max_new_tokens = tokens_box.slider("Max new tokens", 8, 512, 128, 8)
    history = st.session_state.setdefault(f"chat:{run.path}:{round_}", [])
    if clear_box.button("Clear", icon=":material/delete:"):
        history.clear()

    settings = rundata.model_settings(run)
    with st.spinner(f"Loading {settings.model_path} (once per process)…"):
        tokenizer, model, lock = load_model(settings, json.dumps(run.config["model"], sort_keys=True))
    adapter_file = run.adapter_file(round_)
    adapter = load_adapter(str(adapter_file), adapter_file.stat().st_mtime)

    base_head, tuned_head = st.columns(2)
    base_head.subheader("Base model")
    base_head.caption(f"`{settings.model_path}`")
    tuned_head.subheader(f"Base + round {round_} global adapter")
    tuned_head.caption(f"`{adapter_file.parent}`")
    for index, turn in enumerate(history):
        _show_turn(index, turn)

    prompt = st.chat_input("Ask both models")
    if prompt:
        turn = {"user": prompt}
        st.chat_message("user").write(prompt)
        columns = dict(zip(("base", "tuned"), st.columns(2)))
        for side, weights in (("base", None), ("tuned", adapter)):
            messages = _messages(history, side) + [{"role": "user", "content": prompt}]
            with columns[side].container(key=f"reply-{side}-{len(history)}"), st.chat_message("assistant"):
                turn[side] = st.write_stream(
                    stream_reply(tokenizer, model, lock, messages, weights, temperature, max_new_tokens)
                )
        history.append(turn)


def _show_turn(index: int, turn: dict) -> None:
    st.chat_message("user").write(turn["user"])
    for side, column in zip(("base", "tuned"), st.columns(2)):
        with column.container(key=f"reply-{side}-{index}"), st.chat_message("assistant"):
            st.write(turn[side] or "_(empty reply: the model stopped at once)_")


def _messages(history: list[dict], side: str) -> list[dict]:
    """The conversation as `side` saw it: each model is shown its own earlier replies."""
    messages = []
    for turn in history:
        messages += [{"role": "user", "content": turn["user"]}, {"role": "assistant", "content": turn[side]}]
    return messages
