"""The `echo` engine: no model, every request finishes at the next step with a fixed text.

Operators use it to load-test a deployment without a GPU, and the benchmark uses it to
measure the worker's own ceiling: everything else (claim, storage, image decode, the
micro-batcher, result writes, webhooks) runs exactly as with vLLM.

Token counts are plausible rather than exact: the prompt is counted at about four
characters a token plus Qwen2-VL's one token per 28x28 patch of the image, and the reply
is as many tokens as its words, capped at the job's `max_tokens`. Nothing is templated or
tokenized, so the special-token guard of worker/prompting.py has nothing to guard here.

With `VLMQ_ECHO_FAULTS=true` it also plays the failures a real engine has, for drills and
tests of the recovery paths: a prompt containing `[echo:crash]` makes the engine step
fail (as a crashed engine core does) and `[echo:hang]` never finishes.
"""

from __future__ import annotations

import time

from worker.engines.base import GenerationOutput, GenerationRequest, StepResult

CRASH_MARKER = "[echo:crash]"
HANG_MARKER = "[echo:hang]"
ECHO_TEXT = "This is the echo engine: no model ran, the job went through every other stage."
_PATCH = 28


class EchoBackend:
    def __init__(self, faults: bool = False) -> None:
        self.faults = faults
        self._admitted: list[GenerationRequest] = []

    def add(self, requests: list[GenerationRequest]) -> list[StepResult]:
        self._admitted.extend(requests)
        return []

    def step(self) -> list[StepResult]:
        if self.faults and any(CRASH_MARKER in r.prompt for r in self._admitted):
            raise RuntimeError("echo engine crashed on a request marked [echo:crash]")
        hung = [r for r in self._admitted if self.faults and HANG_MARKER in r.prompt]
        finished = [r for r in self._admitted if r not in hung]
        self._admitted = hung
        if not finished:
            time.sleep(0.001)  # a real step takes time; do not spin on hung requests
        return [(request.request_id, _answer(request)) for request in finished]

    def abort(self, request_ids: list[str]) -> None:
        gone = set(request_ids)
        self._admitted = [r for r in self._admitted if r.request_id not in gone]

    def num_unfinished(self) -> int:
        return len(self._admitted)

    def shutdown(self) -> None:
        self._admitted = []


def _answer(request: GenerationRequest) -> GenerationOutput:
    max_tokens = int(request.params.get("max_tokens") or 1)
    words = ECHO_TEXT.split()[:max_tokens]
    width, height = request.image.size
    image_tokens = max(1, round(width / _PATCH) * round(height / _PATCH))
    return GenerationOutput(
        text=" ".join(words),
        token_ids=list(range(len(words))),
        prompt_tokens=len(request.prompt) // 4 + image_tokens + 8,
        completion_tokens=len(words),
        finish_reason="length" if len(words) == max_tokens else "stop",
    )
