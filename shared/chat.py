"""OpenAI chat-completions bodies as vlmq jobs, and finished jobs as `chat.completion`s.

A batch line's `body` and a `POST /v1/chat/completions` body map the same way: the text
of the system and user messages becomes the job's prompt, the `image_url` parts its images
(in the order given, each where it stood among the text parts, kept as the job's
`image_offsets`; their number is held to VLMQ_MAX_IMAGES_PER_JOB at intake), and the
sampling and `response_format` fields its generation parameters. What a job cannot express (an assistant turn, tools, streaming,
n > 1) is refused with the field it concerns, so a client learns which part of its request
to change.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from shared.errors import InvalidInput, clipped, quoted, quoted_list
from shared.jobs.structured import MAX_CHOICES, MAX_REGEX_CHARS, Choice, ResponseFormat
from shared.models import Job

# Fields a chat-completions client may send that change nothing here; anything else
# unknown is refused rather than silently ignored.
_HARMLESS_FIELDS = {"user", "store", "metadata", "logprobs", "top_logprobs", "service_tier",
                    "parallel_tool_calls", "stream_options", "reasoning_effort", "modalities"}

# Stop sequences, here and in a job's own params: OpenAI takes up to 4 and vLLM any number
# of any length; each is stored with the job and repeated in every listing of it, so both
# are bounded, generously for real use (a stop sequence is a few tokens).
MAX_STOP_SEQUENCES = 8
MAX_STOP_CHARS = 256
StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS)]
StopList = Annotated[list[StopString], Field(max_length=MAX_STOP_SEQUENCES)]
# What one request can ask for is a few images and a prompt; beyond these a body is abuse.
MAX_MESSAGES = 64
MAX_CONTENT_PARTS = 64
MAX_MODEL_CHARS = Job.model.type.length


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=MAX_MODEL_CHARS)
    messages: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    # One string or a list of them; validated as a list, so an error names the list's bound.
    stop: Annotated[StopList | None, BeforeValidator(
        _one_or_many, json_schema_input_type=StopString | StopList | None,
    )] = None
    n: int | None = None
    stream: bool | None = None
    # OpenAI's structured output (shared/jobs/structured.py).
    response_format: ResponseFormat | None = None
    # vlmq's own: 0 runs first, 9 last.
    priority: int | None = Field(default=None, ge=0, le=9)
    # vlmq's own constraints, as on /v1/jobs: one of these labels, or a regular expression.
    choices: list[Choice] | None = Field(default=None, min_length=1, max_length=MAX_CHOICES)
    regex: str | None = Field(default=None, min_length=1, max_length=MAX_REGEX_CHARS)


@dataclass(frozen=True)
class ChatJob:
    """What a chat request asks of the job pipeline."""

    model: str
    prompt: str
    # data:, https:// or s3:// URLs, not yet fetched or decoded, in the order given.
    image_urls: tuple[str, ...]
    params: dict[str, Any]  # GenerationParams fields the request set
    priority: int | None

    @property
    def image_url(self) -> str:
        return self.image_urls[0]


def parse_chat_request(body: object) -> ChatJob:
    """Raises InvalidInput (code, and `param` in the message) for anything a job cannot do."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", code="invalid_request")
    try:
        req = ChatRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        # A location may hold the client's own dict keys: each part is cut short.
        param = ".".join(clipped(str(p)) for p in first.get("loc", ()))
        raise InvalidInput(f"{param}: {first.get('msg', 'invalid')}",
                           code="invalid_request") from exc
    unknown = sorted(set(req.model_extra or {}) - _HARMLESS_FIELDS)
    if unknown:
        raise InvalidInput(f"unsupported fields: {quoted_list(unknown)}",
                           code="unsupported_field")
    if req.stream:
        raise InvalidInput("stream: streaming is not supported; poll a job instead",
                           code="unsupported_field")
    if req.n not in (None, 1):
        raise InvalidInput("n: only one choice per request", code="unsupported_field")
    prompt, image_urls, offsets = _prompt_and_images(req.messages)
    params = _params(req)
    if any(offsets):  # all zero: every image before the text, as a job without them
        params["image_offsets"] = offsets
    return ChatJob(model=req.model, prompt=prompt, image_urls=image_urls,
                   params=params, priority=req.priority)


def _prompt_and_images(
    messages: list[dict[str, Any]],
) -> tuple[str, tuple[str, ...], list[int]]:
    """The prompt (the text parts joined by blank lines), the image URLs in order, and
    where each image sits in the prompt: at the start of the text that follows it, or at
    the end when none does."""
    texts: list[str] = []
    images: list[str] = []
    # For each image, how many of the texts came before it.
    texts_before: list[int] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ("system", "developer", "user"):
            raise InvalidInput(
                f"messages[{i}].role: {quoted(role)} is not supported; send system and user "
                "messages only (one question about its images)", code="unsupported_message",
            )
        content = message.get("content")
        if isinstance(content, str):
            if content.strip():
                texts.append(content)
            continue
        if not isinstance(content, list):
            raise InvalidInput(f"messages[{i}].content: a string or a list of parts",
                               code="invalid_request")
        if len(content) > MAX_CONTENT_PARTS:
            raise InvalidInput(f"messages[{i}].content: at most {MAX_CONTENT_PARTS} parts",
                               code="invalid_request")
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                if part["text"].strip():
                    texts.append(part["text"])
            elif kind == "image_url" and role == "user":
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if not isinstance(url, str) or not url:
                    raise InvalidInput(f"messages[{i}].content[{j}].image_url.url is missing",
                                       code="invalid_request")
                images.append(url)
                texts_before.append(len(texts))
            else:
                raise InvalidInput(
                    f"messages[{i}].content[{j}]: parts are text, or image_url in a user "
                    "message", code="unsupported_content",
                )
    if not images:
        raise InvalidInput("messages: an image_url part is needed, found none",
                           code="image_count")
    prompt = "\n\n".join(texts)
    if not prompt:
        raise InvalidInput("messages: a non-empty text part is required", code="missing_prompt")
    starts = [0]
    for text in texts:
        starts.append(starts[-1] + len(text) + len("\n\n"))
    offsets = [starts[n] if n < len(texts) else len(prompt) for n in texts_before]
    return prompt, tuple(images), offsets


def _params(req: ChatRequest) -> dict[str, Any]:
    params: dict[str, Any] = {}
    max_tokens = req.max_completion_tokens or req.max_tokens
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    for name in ("temperature", "top_p", "seed"):
        value = getattr(req, name)
        if value is not None:
            params[name] = value
    if req.stop is not None:
        params["stop"] = req.stop
    if req.response_format is not None and req.response_format.type != "text":
        params["response_format"] = req.response_format.model_dump(exclude_none=True)
    for name in ("choices", "regex"):
        if getattr(req, name) is not None:
            params[name] = getattr(req, name)
    return params


def decode_data_url(url: str) -> bytes:
    """The bytes of a `data:image/...;base64,...` URL."""
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:") or not header.endswith(";base64"):
        raise InvalidInput("image data URLs must look like data:image/png;base64,<data>",
                           code="invalid_data_url")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("the image data URL is not valid base64",
                           code="invalid_base64") from exc


def completion_object(*, job_id: str, model: str, created: int, text: str,
                      finish_reason: str | None, prompt_tokens: int,
                      completion_tokens: int) -> dict[str, Any]:
    """A finished job in OpenAI's `chat.completion` shape."""
    return {
        "id": f"chatcmpl-{job_id}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "finish_reason": "length" if finish_reason == "length" else "stop",
            "logprobs": None,
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def error_object(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error body: what an error line's response body and a chat error carry."""
    return {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": code}}
