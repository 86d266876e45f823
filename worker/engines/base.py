"""The engine interface the worker drives, modelled on vLLM's EngineClient.

`Engine` is what tasks call (blocking, thread-safe). `StepBackend` is what a concrete
model runtime implements so the micro-batcher can feed it: add requests, run one step,
collect finished ones.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from shared.jobs.structured import constraint_kind


class EngineError(Exception):
    """The engine itself failed; the job may succeed on another attempt.

    `in_flight` is how many requests were inside the engine when it failed: with more than
    one, any of them may have been the cause.
    """

    def __init__(self, message: str, in_flight: int = 1) -> None:
        super().__init__(message)
        self.in_flight = in_flight


class JobTimedOut(Exception):
    """The request spent longer in the engine than the job time limit and was aborted."""


class RequestRejected(Exception):
    """This request can never run (e.g. prompt longer than the model allows)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def unprocessable(exc: Exception) -> RequestRejected:
    return RequestRejected(
        "invalid_request",
        f"the model's input processor could not handle this request ({exc.__class__.__name__}: "
        f"{exc}); check the image and prompt",
    )


def structured_output_unsupported(engine: str) -> RequestRejected:
    return RequestRejected(
        "structured_output_unsupported",
        f"the {engine} engine cannot constrain its output (response_format, choices, "
        "regex); submit the job to a model served by a worker with VLMQ_ENGINE=vllm",
    )


class RequestAborted(Exception):
    pass


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt: str
    image: Image.Image
    params: dict[str, Any] = field(default_factory=dict)
    # Runs with no other request in the engine (it was present at repeated engine failures).
    solo: bool = False
    # Whether its result counts in the worker's metrics (a warm-up request's does not).
    counted: bool = True
    # The job's second and later images, in prompt order.
    extra_images: tuple[Image.Image, ...] = ()

    @property
    def images(self) -> list[Image.Image]:
        """Every image, in the order the prompt places them."""
        return [self.image, *self.extra_images]


@dataclass(frozen=True)
class GenerationOutput:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    # Of prompt_tokens, the image's placeholders, where the engine tells them apart.
    image_tokens: int | None = None
    # The request's share of the engine steps it was in (set by the micro-batcher).
    engine_seconds: float = 0.0


class Engine(Protocol):
    def submit(self, request: GenerationRequest) -> Future[GenerationOutput]: ...
    def generate(self, request: GenerationRequest) -> GenerationOutput: ...
    def abort(self, request_id: str) -> None: ...
    def shutdown(self) -> None: ...


StepResult = tuple[str, GenerationOutput | Exception]


def refuse_constrained(
    requests: list[GenerationRequest], engine: str
) -> tuple[list[GenerationRequest], list[StepResult]]:
    """For an engine without constrained decoding: the requests it can run, and those with
    a structured-output constraint refused (a permanent failure; never run unconstrained,
    which would hand back text the caller asked never to get)."""
    if not any(constraint_kind(r.params) is not None for r in requests):
        return requests, []
    runnable = [r for r in requests if constraint_kind(r.params) is None]
    refused: list[StepResult] = [(r.request_id, structured_output_unsupported(engine))
                                 for r in requests if constraint_kind(r.params) is not None]
    return runnable, refused


class StepBackend(Protocol):
    def add(self, requests: list[GenerationRequest]) -> list[StepResult]:
        """Admit requests; returns the ones rejected at once."""
        ...

    def step(self) -> list[StepResult]:
        """Advance every admitted request; return those that finished."""
        ...

    def abort(self, request_ids: list[str]) -> None: ...
    def num_unfinished(self) -> int: ...
    def shutdown(self) -> None: ...
