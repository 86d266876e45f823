"""Hugging Face transformers backend: padded batch `generate` over requests with equal params.

The fallback engine and the parity reference for vLLM. It batches, but a batch runs
to completion before the next one is admitted (no continuous batching).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from worker.engines.base import (
    GenerationOutput,
    GenerationRequest,
    RequestRejected,
    StepResult,
    refuse_constrained,
    unprocessable,
)
from worker.prompting import ChatPrompt, check_prompt_fits, cut_at_stop

log = logging.getLogger(__name__)

_SAMPLING_KEYS = ("max_tokens", "temperature", "top_p", "top_k", "seed")


class TransformersBackend:
    def __init__(
        self, model_path: str, *, max_model_len: int, max_batch_size: int, ignore_eos: bool = False
    ) -> None:
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.processor.tokenizer.padding_side = "left"
        self.chat = ChatPrompt(self.processor)
        self.model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype)
        self.model.to(self.device).eval()
        self.max_model_len = max_model_len
        self.max_batch_size = max_batch_size
        self.ignore_eos = ignore_eos
        self.eos_ids = _eos_ids(self.model, self.processor.tokenizer)
        self.pad_id = self.processor.tokenizer.pad_token_id
        # Qwen2-VL's <|image_pad|>: the prompt's image placeholders are counted as its
        # image tokens.
        self.image_token_id = getattr(self.model.config, "image_token_id", None)
        self._pending: list[tuple[GenerationRequest, str]] = []

    def add(self, requests: list[GenerationRequest]) -> list[StepResult]:
        requests, rejected = refuse_constrained(requests, "transformers")
        for request in requests:
            text = self.chat.render(request.prompt, len(request.images),
                                    request.params.get("image_offsets"))
            try:
                n_tokens = self._count_prompt_tokens(text, request)
                check_prompt_fits(n_tokens, self.max_model_len)
            except RequestRejected as exc:
                rejected.append((request.request_id, exc))
                continue
            except Exception as exc:  # this request's inputs broke the processor, not the engine
                log.warning("request %s rejected by the processor", request.request_id, exc_info=True)
                rejected.append((request.request_id, unprocessable(exc)))
                continue
            self._pending.append((request, text))
        return rejected

    def step(self) -> list[StepResult]:
        group = self._take_group()
        if not group:
            return []
        try:
            return self._generate(group)
        except Exception as exc:
            log.exception("transformers generate failed for %d requests", len(group))
            return [(request.request_id, exc) for request, _ in group]

    def abort(self, request_ids: list[str]) -> None:
        drop = set(request_ids)
        self._pending = [(r, t) for r, t in self._pending if r.request_id not in drop]

    def num_unfinished(self) -> int:
        return len(self._pending)

    def shutdown(self) -> None:
        self._pending.clear()
        del self.model

    def _count_prompt_tokens(self, text: str, request: GenerationRequest) -> int:
        inputs = self.processor(text=[text], images=request.images, return_tensors="pt")
        return int(inputs["input_ids"].shape[1])

    def _take_group(self) -> list[tuple[GenerationRequest, str]]:
        """Requests sharing sampling params, oldest first; one generate call serves them."""
        if not self._pending:
            return []
        key = _sampling_key(self._pending[0][0])
        group = [p for p in self._pending if _sampling_key(p[0]) == key][: self.max_batch_size]
        taken = {id(p) for p in group}
        self._pending = [p for p in self._pending if id(p) not in taken]
        return group

    @torch.inference_mode()
    def _generate(self, group: list[tuple[GenerationRequest, str]]) -> list[StepResult]:
        params = group[0][0].params
        inputs = self.processor(
            text=[text for _, text in group],
            # Flat, in order: the processor fills the texts' image blocks one by one.
            images=[image for request, _ in group for image in request.images],
            padding=True,
            return_tensors="pt",
        ).to(self.device)
        prompt_len = inputs["input_ids"].shape[1]
        new_tokens = min(params["max_tokens"], self.max_model_len - prompt_len)
        if params.get("seed") is not None:
            torch.manual_seed(int(params["seed"]))
        sampling = params["temperature"] > 0
        out = self.model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens if self.ignore_eos else None,
            do_sample=sampling,
            temperature=params["temperature"] if sampling else None,
            top_p=params["top_p"] if sampling else None,
            top_k=(params["top_k"] if params["top_k"] > 0 else 0) if sampling else None,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.pad_id,
        )
        prompt_counts = inputs["attention_mask"].sum(dim=1).tolist()
        image_counts: list[int | None] = (
            (inputs["input_ids"] == self.image_token_id).sum(dim=1).tolist()
            if self.image_token_id is not None else [None] * len(group))
        results: list[StepResult] = []
        for row, (request, _) in enumerate(group):
            ids, hit_eos = _trim(out[row, prompt_len:].tolist(), self.eos_ids)
            text = self.processor.tokenizer.decode(ids, skip_special_tokens=True)
            text, hit_stop = cut_at_stop(text, request.params.get("stop") or [])
            results.append(
                (
                    request.request_id,
                    GenerationOutput(
                        text=text,
                        token_ids=ids,
                        prompt_tokens=int(prompt_counts[row]),
                        completion_tokens=len(ids) + (1 if hit_eos else 0),
                        finish_reason="stop" if hit_eos or hit_stop else "length",
                        image_tokens=image_counts[row],
                    ),
                )
            )
        return results


def _sampling_key(request: GenerationRequest) -> tuple[Any, ...]:
    return tuple(request.params.get(k) for k in _SAMPLING_KEYS)


def _trim(ids: list[int], eos_ids: set[int]) -> tuple[list[int], bool]:
    for i, tok in enumerate(ids):
        if tok in eos_ids:
            return ids[:i], True
    return ids, False


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
