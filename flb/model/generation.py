"""Greedy generation for evaluation (the server's suites, a client's own held-out records): batched, left-padded
continuations of already-formatted texts, and exact match against a prompt-completion record's answer."""

from __future__ import annotations

import contextlib

from flb.model.sft_settings import chat_prompt, left_padded


@contextlib.contextmanager
def evaluation_mode(model):
    """The model in eval mode (no dropout) for the block; its training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def chat_text(tokenizer, user_message: str) -> str:
    """`user_message` in the tokenizer's chat template, ending where the assistant's reply begins."""
    return chat_prompt(tokenizer, [{"role": "user", "content": user_message}])


def greedy_continuations(
    model,
    tokenizer,
    texts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    stop: tuple[str, ...] = (),
    label: str = "generating",
) -> list[str]:
    """What greedy decoding appends to each text (special tokens dropped), cut at the first of `stop`. Texts are
    batched by length so that little padding is computed; the answers come back in the order of `texts`. A bar
    named `label` counts the batches."""
    import torch
    from tqdm.auto import tqdm

    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    answers: list[str] = [""] * len(ids)
    device = next(model.parameters()).device
    with evaluation_mode(model), torch.no_grad():
        for start in tqdm(range(0, len(order), batch_size), desc=label, leave=False):
            rows = order[start : start + batch_size]
            input_ids, attention_mask = left_padded([ids[i] for i in rows], tokenizer.pad_token_id)
            width = input_ids.shape[1]
            stopping = dict(stop_strings=list(stop), tokenizer=tokenizer) if stop else {}
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=tokenizer.pad_token_id,
                **stopping,
            )
            for i, text in zip(rows, tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)):
                answers[i] = cut_at_stop(text, stop)
    return answers


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """`text` up to (not including) the earliest of the stop sequences in it."""
    return text[: min([text.find(s) for s in stop if s in text], default=len(text))]


def exact_matches(
    model, tokenizer, records: list[dict], *, max_new_tokens: int, batch_size: int, answer: str, label: str
) -> list[bool]:
    """Whether greedy decoding of each conversational record's prompt gives its `answer` column's last message
    (completion; chosen for preference pairs), both stripped; `label` names the progress bar."""
    answers = greedy_continuations(
        model,
        tokenizer,
        [chat_prompt(tokenizer, record["prompt"]) for record in records],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        label=label,
    )
    return [text.strip() == record[answer][-1]["content"].strip() for record, text in zip(records, answers)]
