"""The `echo` engine: no model, every request finishes at the next step with a fixed text.

Operators use it to load-test a deployment without a GPU, and the benchmark uses it to
measure the worker's own ceiling: everything else (claim, storage, image decode, the
micro-batcher, result writes, webhooks) runs exactly as with vLLM.

Token counts are plausible rather than exact: the prompt is counted at about four
characters a token plus Qwen2-VL's one token per 28x28 patch of the image (its image
tokens), and the reply
is as many tokens as its words, capped at the job's `max_tokens`. Nothing is templated or
tokenized, so the special-token guard of worker/prompting.py has nothing to guard here.

With `VLMQ_ECHO_STEP_MS` above 0 it simulates a GPU engine instead (`TimedEchoBackend`),
so any machine can tell whether the worker keeps a fast engine busy. Each step takes that
many milliseconds and advances every running sequence by one token; at most
`VLMQ_MAX_NUM_SEQS` sequences run, and the rest wait inside the engine in arrival order, as
in vLLM's scheduler. A request finishes after exactly its `max_tokens` steps (that many
words, finish reason "length"), so the engine's top rate is known: max_num_seqs /
(max_tokens x step), e.g. 256 / (64 x 15 ms) = 267 images/s. Steps run on the engine's
own clock, like vLLM's engine core in its own process: the worker's time between steps
overlaps the step in progress, a request added while a step runs joins the next one, and
a caller that comes back late gets every step that ended meanwhile.

With `VLMQ_ECHO_FAULTS=true` it also plays the failures a real engine has, for drills and
tests of the recovery paths: a prompt containing `[echo:crash]` makes the engine step
fail (as a crashed engine core does) and `[echo:hang]` never finishes (in the simulated
engine it holds its sequence slot meanwhile).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from worker.engines.base import (
    GenerationOutput,
    GenerationRequest,
    StepResult,
    refuse_constrained,
)

log = logging.getLogger(__name__)

CRASH_MARKER = "[echo:crash]"
HANG_MARKER = "[echo:hang]"
ECHO_TEXT = "This is the echo engine: no model ran, the job went through every other stage."
_PATCH = 28


class EchoBackend:
    def __init__(self, faults: bool = False) -> None:
        self.faults = faults
        self._admitted: list[GenerationRequest] = []

    def add(self, requests: list[GenerationRequest]) -> list[StepResult]:
        requests, refused = refuse_constrained(requests, "echo")
        self._admitted.extend(requests)
        return refused

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


@dataclass
class _Waiting:
    request: GenerationRequest
    arrived: float


@dataclass
class _Running:
    request: GenerationRequest
    finishes_at_step: int | None  # None: a hung request, which never finishes


class TimedEchoBackend(EchoBackend):
    """The simulated GPU engine (see the module's docstring).

    `clock` and `sleep` are the real ones except in tests, which drive a fake clock.
    `steps`, `sequence_steps` and `peak_running` tell how busy the engine was:
    occupancy is sequence_steps / (steps x max_num_seqs).
    """

    def __init__(self, faults: bool = False, *, step_ms: float, max_num_seqs: int,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if step_ms <= 0 or max_num_seqs < 1:
            raise ValueError("the simulated echo engine needs step_ms > 0 and max_num_seqs >= 1")
        super().__init__(faults)
        self.step_seconds = step_ms / 1000
        self.max_num_seqs = max_num_seqs
        self._clock = clock
        self._sleep = sleep
        self._waiting: deque[_Waiting] = deque()
        self._running: dict[str, _Running] = {}
        # Request ids by the step that finishes them, so a step costs what it admits and
        # finishes rather than a pass over every running sequence.
        self._finishing: dict[int, list[str]] = {}
        self._free_at = float("-inf")  # when the last step ended (or the one running ends)
        self.steps = 0
        self.sequence_steps = 0
        self.peak_running = 0

    def max_images_per_s(self, max_tokens: int) -> float:
        """The top rate for jobs of `max_tokens` tokens: every slot busy at every step."""
        return self.max_num_seqs / (max_tokens * self.step_seconds)

    def add(self, requests: list[GenerationRequest]) -> list[StepResult]:
        requests, refused = refuse_constrained(requests, "echo")
        now = self._clock()
        self._waiting.extend(_Waiting(request, now) for request in requests)
        return refused

    def step(self) -> list[StepResult]:
        results: list[StepResult] = []
        now = self._clock()
        ran = False
        while (start := self._next_start()) is not None:
            end = start + self.step_seconds
            if end > now:
                if ran:
                    break
                # Sleeping (not spinning) leaves the CPU to the worker's other threads, and
                # sleeping only the remainder keeps the period exact whatever the caller
                # did since the last step ended.
                self._sleep(end - now)
                now = max(self._clock(), end)
            results.extend(self._run_step(start))
            ran = True
        return results

    def _next_start(self) -> float | None:
        """When the next step starts: right after the last one while sequences run; when an
        idle engine is handed its first request otherwise."""
        if self._running:
            return self._free_at
        if self._waiting:
            return max(self._free_at, self._waiting[0].arrived)
        return None

    def _run_step(self, start: float) -> list[StepResult]:
        # As vLLM's scheduler does at the start of a step: free slots take waiting requests
        # first come, first served; one added after the step began waits for the next.
        while (self._waiting and len(self._running) < self.max_num_seqs
               and self._waiting[0].arrived <= start):
            request = self._waiting.popleft().request
            if self.faults and CRASH_MARKER in request.prompt:
                raise RuntimeError("echo engine crashed on a request marked [echo:crash]")
            finishes: int | None = None
            if not (self.faults and HANG_MARKER in request.prompt):
                finishes = self.steps + _max_tokens(request)
                self._finishing.setdefault(finishes, []).append(request.request_id)
            self._running[request.request_id] = _Running(request, finishes)
        self.steps += 1
        self.sequence_steps += len(self._running)
        self.peak_running = max(self.peak_running, len(self._running))
        self._free_at = start + self.step_seconds
        finished: list[StepResult] = []
        for request_id in self._finishing.pop(self.steps, []):
            running = self._running.get(request_id)
            # An aborted id may have been added again since; only its own step ends it.
            if running is not None and running.finishes_at_step == self.steps:
                del self._running[request_id]
                finished.append((request_id, _full_answer(running.request)))
        return finished

    def abort(self, request_ids: list[str]) -> None:
        gone = set(request_ids)
        for request_id in gone:
            self._running.pop(request_id, None)
        if any(w.request.request_id in gone for w in self._waiting):
            self._waiting = deque(w for w in self._waiting if w.request.request_id not in gone)

    def num_unfinished(self) -> int:
        return len(self._running) + len(self._waiting)

    def shutdown(self) -> None:
        if self.steps:
            log.info("simulated echo engine: %d steps of %.1f ms, %.1f%% of %d slots busy",
                     self.steps, 1000 * self.step_seconds,
                     100 * self.sequence_steps / (self.steps * self.max_num_seqs),
                     self.max_num_seqs)
        self._waiting.clear()
        self._running.clear()
        self._finishing.clear()


def _max_tokens(request: GenerationRequest) -> int:
    return max(1, int(request.params.get("max_tokens") or 1))


def _image_tokens(request: GenerationRequest) -> int:
    return sum(max(1, round(image.width / _PATCH) * round(image.height / _PATCH))
               for image in request.images)


def _prompt_tokens(request: GenerationRequest) -> int:
    return len(request.prompt) // 4 + _image_tokens(request) + 8


def _answer(request: GenerationRequest) -> GenerationOutput:
    max_tokens = _max_tokens(request)
    words = ECHO_TEXT.split()[:max_tokens]
    return GenerationOutput(
        text=" ".join(words),
        token_ids=list(range(len(words))),
        prompt_tokens=_prompt_tokens(request),
        completion_tokens=len(words),
        finish_reason="length" if len(words) == max_tokens else "stop",
        image_tokens=_image_tokens(request),
    )


def _full_answer(request: GenerationRequest) -> GenerationOutput:
    """All `max_tokens` tokens, as a model that never reached its end of text gives them."""
    max_tokens = _max_tokens(request)
    words = list(itertools.islice(itertools.cycle(ECHO_TEXT.split()), max_tokens))
    return GenerationOutput(
        text=" ".join(words),
        token_ids=list(range(max_tokens)),
        prompt_tokens=_prompt_tokens(request),
        completion_tokens=max_tokens,
        finish_reason="length",
        image_tokens=_image_tokens(request),
    )
