"""Renders a job's prompt with the model's own chat template, one image first."""

from __future__ import annotations

from typing import Any

from worker.engines.base import RequestRejected


def render_chat_prompt(processor_or_tokenizer: Any, prompt: str) -> str:
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": prompt}],
        }
    ]
    return processor_or_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Cut `text` at the earliest stop string; True when one was found."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def check_prompt_fits(prompt_tokens: int, max_model_len: int) -> None:
    """The prompt must leave room for one generated token; max_tokens is capped to the rest."""
    if prompt_tokens >= max_model_len:
        raise RequestRejected(
            "prompt_too_long",
            f"the prompt is {prompt_tokens} tokens with the image; the model's context is "
            f"{max_model_len} tokens; shorten the prompt or send a smaller image",
        )
