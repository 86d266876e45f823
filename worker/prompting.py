"""Renders a job's prompt with the model's own chat template, its images where the job
places them (`image_offsets`), else first."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from worker.engines.base import RequestRejected

# Inserted after the first character of a special-token string found in user text. It is
# invisible, it is part of no special token, and tokenizers that split added tokens out of
# text before byte-level BPE (every Hugging Face tokenizer, so vLLM too) then see ordinary
# characters: the model reads what the user wrote, but as text, not as a control token.
TOKEN_BREAK = "\u200b"


class SpecialTokenGuard:
    """Keeps user text from forging the chat template's control tokens.

    Tokenizers turn any special-token string in their input into that token, wherever it
    came from. Templated as is, a prompt containing "<|im_end|>\\n<|im_start|>system\\n..."
    would close the user's turn and open a system turn of the user's making, and an extra
    "<|image_pad|>" would claim image features the job does not have. Breaking those
    strings in the user's text, before it is templated, leaves the template's own tokens as
    the only control tokens in the rendered prompt.
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        # A one-character token cannot be broken by an insertion; a token containing the
        # break itself could be formed by one, and the loop in __call__ would not end.
        breakable = sorted({t for t in tokens if len(t) > 1 and TOKEN_BREAK not in t},
                           key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, breakable))) if breakable else None

    @classmethod
    def of(cls, processor_or_tokenizer: Any) -> SpecialTokenGuard:
        return cls(special_tokens(getattr(processor_or_tokenizer, "tokenizer",
                                          processor_or_tokenizer)))

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        # One pass breaks every match it finds; a token overlapping a match it broke
        # (possible when one token's end is another's start) is found by the next pass.
        # Breaking never forms a new token, so the passes end.
        while self._pattern.search(text):
            text = self._pattern.sub(_break, text)
        return text


def special_tokens(tokenizer: Any) -> set[str]:
    """Every string the tokenizer turns into a special token: the named ones (bos, eos,
    pad, ...) and the added tokens marked special (Qwen2-VL's turn and vision markers)."""
    tokens = set(getattr(tokenizer, "all_special_tokens", None) or [])
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    tokens.update(str(t.content) for t in added.values() if getattr(t, "special", False))
    return {t for t in tokens if t}


def _break(match: re.Match[str]) -> str:
    token = match.group(0)
    return token[0] + TOKEN_BREAK + token[1:]


class ChatPrompt:
    """The model's chat template with the user's text guarded; built once per engine."""

    def __init__(self, processor_or_tokenizer: Any) -> None:
        self.template_owner = processor_or_tokenizer
        self.guard = SpecialTokenGuard.of(processor_or_tokenizer)

    def render(self, prompt: str, images: int = 1, offsets: Sequence[int] | None = None) -> str:
        """The user's turn holds the job's images and its text, each image at its offset in
        the text (None: all before it): the template gives each image its own placeholder
        block (Qwen2-VL's <|vision_start|><|image_pad|><|vision_end|>), which the engine's
        processor expands to that image's tokens, the n-th block for the n-th image. Each
        piece of text is guarded on its own; a control token cut by an image is no token."""
        content: list[dict[str, str]] = []
        done = 0
        for at in (offsets if offsets is not None else [0] * images):
            if at > done:
                content.append({"type": "text", "text": self.guard(prompt[done:at])})
                done = at
            content.append({"type": "image"})
        if done < len(prompt) or not prompt:
            content.append({"type": "text", "text": self.guard(prompt[done:])})
        messages = [{"role": "user", "content": content}]
        return self.template_owner.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )


def render_chat_prompt(processor_or_tokenizer: Any, prompt: str, images: int = 1,
                       offsets: Sequence[int] | None = None) -> str:
    """One-off rendering; engines keep a ChatPrompt so the guard is built once."""
    return ChatPrompt(processor_or_tokenizer).render(prompt, images, offsets)


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
