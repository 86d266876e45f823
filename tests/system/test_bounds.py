"""Every stored field of a job, a batch and a file is bounded, and so is every response.

A refusal is a 400/422 naming the field, quotes at most a short prefix of the value, and
leaves nothing behind: no job, batch or file row, no stored object. Deeply nested JSON is
a 400 on every JSON route, never a 500. No worker runs here: nothing should reach one.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from api.routes.jobs import MAX_PAGE_BYTES
from api.schemas.native import MAX_PARAMS_BYTES, GenerationParams
from shared.chat import MAX_STOP_CHARS, MAX_STOP_SEQUENCES
from shared.jobs.structured import (
    MAX_CHOICE_CHARS,
    MAX_CONSTRAINT_BYTES,
    MAX_DESCRIPTION_CHARS,
    MAX_NAME_CHARS,
    MAX_REGEX_CHARS,
)
from shared.models import Batch, Job, StoredFile
from tests.helpers.images import png_bytes
from tests.helpers.stack import Stack
from tests.helpers.store import count_objects

# An error message quotes at most ~64 characters of any value; with the text around it,
# this is far above any honest message and far below the values sent here.
MAX_MESSAGE = 1024
HUGE = 100_000
DEEP = b"[" * 100_000
PROMPT = "Describe it."
# Six bytes per character once escaped in JSON (\u0001): the worst case for every field.
WORST = "\x01"


@dataclass(frozen=True)
class Footprint:
    jobs: int
    batches: int
    files: int
    objects: int


@pytest.fixture(scope="module")
def footprint(stack: Stack, db_engine: Engine, s3: Any) -> Callable[[], Footprint]:
    def measure() -> Footprint:
        with db_engine.connect() as conn:
            counts = [conn.execute(select(func.count()).select_from(t)).scalar_one()
                      for t in (Job, Batch, StoredFile)]
        return Footprint(*counts, objects=count_objects(s3, stack.settings.store_url))

    return measure


def refused(resp: httpx.Response, status: int, code: str, names: str) -> None:
    """A JSON refusal with `code` whose message names the field and is short."""
    assert resp.status_code == status, resp.text[:2000]
    assert len(resp.content) < MAX_MESSAGE, resp.text[:2000]
    error = resp.json()["error"]
    assert error["code"] == code, error
    assert names in error["message"], error


def image_b64() -> str:
    return base64.b64encode(png_bytes(32, 24)).decode()


def job_json(**fields: Any) -> dict[str, Any]:
    return {"json": {"prompt": PROMPT, "max_tokens": 4, "image": {"base64": image_b64()},
                     **fields}}


def job_form(stop: list[str] | None = None, **fields: str) -> dict[str, Any]:
    parts: list[tuple[str, Any]] = [(k, (None, v)) for k, v in
                                    {"prompt": PROMPT, "max_tokens": "4", **fields}.items()]
    parts += [("stop", (None, s)) for s in stop or []]
    parts.append(("image", ("a.png", png_bytes(32, 24), "image/png")))
    return {"files": parts}


def chat(**fields: Any) -> dict[str, Any]:
    body = {"model": "parked", "messages": [{"role": "user", "content": [
        {"type": "text", "text": PROMPT},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image_b64()}"}},
    ]}], **fields}
    return {"json": body}


def batch(**fields: Any) -> dict[str, Any]:
    return {"json": {"input_file_id": "file-nosuchfile", "endpoint": "/v1/chat/completions",
                     "completion_window": "24h", **fields}}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# (name, route, request, status, code, text the message must hold)
CASES: list[tuple[str, str, Callable[[], dict[str, Any]], int, str, str]] = [
    ("json-stop-item-too-long", "/v1/jobs",
     lambda: job_json(stop=["x" * (MAX_STOP_CHARS + 1)]), 422, "validation_error", "stop.0"),
    ("json-stop-item-huge", "/v1/jobs",
     lambda: job_json(stop=["x" * 1_000_000]), 422, "validation_error", "stop.0"),
    ("json-too-many-stops", "/v1/jobs",
     lambda: job_json(stop=["x"] * (MAX_STOP_SEQUENCES + 1)), 422, "validation_error", "stop"),
    ("form-stop-item-too-long", "/v1/jobs",
     lambda: job_form(stop=["x" * HUGE]), 422, "validation_error", "stop.0"),
    ("form-too-many-stops", "/v1/jobs",
     lambda: job_form(stop=["x"] * (MAX_STOP_SEQUENCES + 1)), 422, "validation_error", "stop"),
    ("json-webhook-url-too-long", "/v1/jobs",
     lambda: job_json(webhook_url="https://example.com/" + "a" * HUGE), 422,
     "validation_error", "webhook_url"),
    ("form-webhook-url-too-long", "/v1/jobs",
     lambda: job_form(webhook_url="https://example.com/" + "a" * HUGE), 422,
     "validation_error", "webhook_url"),
    ("json-too-many-webhook-events", "/v1/jobs",
     lambda: job_json(webhook_url="https://example.com/h", webhook_events=["job.failed"] * 17),
     422, "validation_error", "webhook_events"),
    ("json-many-bad-webhook-events", "/v1/jobs",
     lambda: job_json(webhook_url="https://example.com/h", webhook_events=["x" * 100] * 5000),
     422, "validation_error", "webhook_events"),
    ("json-model-too-long", "/v1/jobs", lambda: job_json(model="m" * HUGE), 422,
     "validation_error", "model"),
    ("form-model-too-long", "/v1/jobs", lambda: job_form(model="m" * HUGE), 422,
     "validation_error", "model"),
    ("unknown-model-quoted-short", "/v1/jobs", lambda: job_json(model="m" * 200), 400,
     "unknown_model", "'" + "m" * 64 + "…'"),
    ("json-huge-unknown-field", "/v1/jobs", lambda: job_json(**{"k" * HUGE: 1}), 400,
     "unknown_field", "k" * 64 + "…"),
    ("json-many-unknown-fields", "/v1/jobs",
     lambda: job_json(**{f"field{i}": 1 for i in range(5000)}), 400, "unknown_field", "more"),
    ("form-huge-unknown-field", "/v1/jobs", lambda: job_form(**{"k" * 2000: "1"}), 400,
     "unknown_field", "k" * 64 + "…"),
    ("json-prompt-too-long", "/v1/jobs", lambda: job_json(prompt="p" * 16_001), 400,
     "prompt_too_long", "16000"),
    ("jobs-deep-nesting", "/v1/jobs",
     lambda: {"content": DEEP, "headers": {"content-type": "application/json"}}, 400,
     "invalid_json", "JSON"),
    ("jobs-deep-nesting-in-a-field", "/v1/jobs",
     lambda: {"content": f'{{"prompt": "x", "stop": {nested(5000)}}}'.encode(),
              "headers": {"content-type": "application/json"}}, 400, "invalid_json", "JSON"),
    ("chat-stop-too-long", "/v1/chat/completions",
     lambda: chat(stop="x" * (MAX_STOP_CHARS + 1)), 400, "invalid_request", "stop"),
    ("chat-stop-item-huge", "/v1/chat/completions",
     lambda: chat(stop=["x" * 1_000_000]), 400, "invalid_request", "stop.0"),
    ("chat-too-many-stops", "/v1/chat/completions",
     lambda: chat(stop=["x"] * (MAX_STOP_SEQUENCES + 1)), 400, "invalid_request", "stop"),
    ("chat-model-too-long", "/v1/chat/completions", lambda: chat(model="m" * HUGE), 400,
     "invalid_request", "model"),
    ("chat-huge-role", "/v1/chat/completions",
     lambda: chat(messages=[{"role": "r" * HUGE, "content": "hi"}]), 400,
     "unsupported_message", "r" * 64 + "…"),
    ("chat-nested-role", "/v1/chat/completions",
     lambda: {"content": f'{{"model": "parked", "messages": [{{"role": {nested(150)},'
                         f' "content": "hi"}}]}}'.encode(),
              "headers": {"content-type": "application/json"}}, 400, "unsupported_message",
     "a list"),
    ("chat-huge-unknown-field", "/v1/chat/completions", lambda: chat(**{"k" * HUGE: 1}), 400,
     "unsupported_field", "k" * 64 + "…"),
    ("chat-too-many-parts", "/v1/chat/completions",
     lambda: chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}] * 65}]),
     400, "invalid_request", "messages[0].content"),
    ("chat-prompt-too-long", "/v1/chat/completions",
     lambda: chat(messages=[{"role": "system", "content": "p" * 16_001},
                            *chat()["json"]["messages"]]), 400, "prompt_too_long", "16000"),
    # A lone surrogate is valid to Python's json module but no text column can store it.
    ("chat-lone-surrogate", "/v1/chat/completions",
     lambda: {"content": b'{"model": "parked", "messages": [{"role": "user", "content": '
                         b'[{"type": "text", "text": "a \\ud800 b"}, {"type": "image_url", '
                         b'"image_url": {"url": "https://example.com/a.png"}}]}]}',
              "headers": {"content-type": "application/json"}}, 400, "invalid_json",
     "not valid JSON"),
    ("chat-deep-nesting", "/v1/chat/completions",
     lambda: {"content": DEEP, "headers": {"content-type": "application/json"}}, 400,
     "invalid_json", "nested"),
    ("chat-deep-nesting-closed", "/v1/chat/completions",
     lambda: {"content": nested(50_000).encode(),
              "headers": {"content-type": "application/json"}}, 400, "invalid_json", "nested"),
    ("batch-too-many-metadata-pairs", "/v1/batches",
     lambda: batch(metadata={f"k{i}": "v" for i in range(17)}), 422, "validation_error",
     "metadata"),
    ("batch-metadata-key-too-long", "/v1/batches",
     lambda: batch(metadata={"k" * 65: "v"}), 422, "validation_error", "metadata"),
    ("batch-metadata-key-huge", "/v1/batches",
     lambda: batch(metadata={"k" * HUGE: "v"}), 422, "validation_error", "k" * 64 + "…"),
    ("batch-metadata-value-too-long", "/v1/batches",
     lambda: batch(metadata={"k": "v" * 513}), 422, "validation_error", "metadata.k"),
    ("batch-metadata-value-nested", "/v1/batches",
     lambda: {"content": f'{{"input_file_id": "f", "endpoint": "/v1/chat/completions",'
                         f' "metadata": {{"k": {nested(500)}}}}}'.encode(),
              "headers": {"content-type": "application/json"}}, 422, "validation_error",
     "metadata.k"),
    ("batch-webhook-url-too-long", "/v1/batches",
     lambda: batch(webhook_url="https://example.com/" + "a" * HUGE), 422, "validation_error",
     "webhook_url"),
    ("batch-too-many-webhook-events", "/v1/batches",
     lambda: batch(webhook_url="https://example.com/h",
                   webhook_events=["batch.completed"] * 17), 422, "validation_error",
     "webhook_events"),
    ("batch-deep-nesting", "/v1/batches",
     lambda: {"content": DEEP, "headers": {"content-type": "application/json"}}, 400,
     "invalid_json", "nested"),
    ("batch-deep-nesting-closed", "/v1/batches",
     lambda: {"content": nested(50_000).encode(),
              "headers": {"content-type": "application/json"}}, 400, "invalid_json", "nested"),
    ("file-name-too-long", "/v1/files",
     lambda: {"files": {"file": ("f" * 600 + ".jsonl", b"{}\n", "application/jsonl")},
              "data": {"purpose": "batch"}}, 400, "invalid_filename", "f" * 64 + "…"),
]


@pytest.mark.parametrize(
    ("route", "build", "status", "code", "names"),
    [pytest.param(route, build, status, code, names, id=name)
     for name, route, build, status, code, names in CASES],
)
def test_over_bound_fields_are_refused_without_trace(
    client: httpx.Client, footprint: Callable[[], Footprint], route: str,
    build: Callable[[], dict[str, Any]], status: int, code: str, names: str,
) -> None:
    before = footprint()
    refused(client.post(route, **build()), status, code, names)
    assert footprint() == before


def test_long_idempotency_key_is_refused(
    client: httpx.Client, footprint: Callable[[], Footprint]
) -> None:
    before = footprint()
    resp = client.post("/v1/jobs", headers={"Idempotency-Key": "k" * 201}, **job_json())
    refused(resp, 400, "invalid_idempotency_key", "Idempotency-Key")
    assert footprint() == before


def _maximal_constraints() -> list[dict[str, Any]]:
    """Each structured-output constraint as large as its bounds let it be, in escaped
    characters (only one is allowed a job)."""
    spec: dict[str, Any] = {"name": "n" * MAX_NAME_CHARS,
                            "description": WORST * MAX_DESCRIPTION_CHARS, "strict": True,
                            "schema": {"type": "object", "description": ""}}
    room = MAX_CONSTRAINT_BYTES - len(json.dumps(spec))
    spec["schema"]["description"] = WORST * (room // 6)
    assert len(json.dumps(spec)) <= MAX_CONSTRAINT_BYTES
    label = WORST * MAX_CHOICE_CHARS
    count = MAX_CONSTRAINT_BYTES // len(json.dumps([label]))
    choices = [label[:-3] + f"{i:03d}" for i in range(count)]
    assert len(json.dumps(choices)) <= MAX_CONSTRAINT_BYTES
    return [
        {"response_format": {"type": "json_schema", "json_schema": spec}},
        {"choices": choices},
        {"regex": WORST * MAX_REGEX_CHARS},
    ]


@pytest.mark.parametrize("constraint", _maximal_constraints(),
                         ids=["response_format", "choices", "regex"])
def test_maximal_params_fit_their_stored_bound(constraint: dict[str, Any]) -> None:
    """The stored params, every field at its bound and every stop character escaped."""
    params = GenerationParams(max_tokens=32768, temperature=1.999999, top_p=0.999999,
                              top_k=1000, seed=2**63 - 1,
                              stop=[WORST * MAX_STOP_CHARS] * MAX_STOP_SEQUENCES,
                              **constraint)
    assert len(json.dumps(params.stored())) <= MAX_PARAMS_BYTES
    assert len(params.model_dump_json().encode()) <= MAX_PARAMS_BYTES


def test_a_page_of_maximal_jobs_stays_under_its_bound(
    client: httpx.Client, stack: Stack
) -> None:
    """Jobs with every stored field at its bound, in the characters that take most room:
    a page stops past MAX_PAGE_BYTES (plus one job) however large `limit` is, and its
    cursor leads to the rest."""
    prompt_chars = stack.settings.max_prompt_chars
    job_bound = 6 * prompt_chars + 24 * 1024
    count = MAX_PAGE_BYTES // (6 * prompt_chars) + 5  # more than one page's worth
    url = "https://images.example.com/" + "a" * (2048 - len("https://images.example.com/"))
    made = set()
    for i in range(count):
        resp = client.post(
            "/v1/jobs", headers={"Idempotency-Key": f"{i:04d}" + "k" * 196},
            json={"prompt": WORST * (prompt_chars - 4) + f"{i:04d}", "model": "parked",
                  "image": {"url": url}, "max_tokens": 4,
                  "stop": [WORST * MAX_STOP_CHARS] * MAX_STOP_SEQUENCES},
        )
        assert resp.status_code == 202, resp.text[:500]
        made.add(resp.json()["id"])

    seen: list[str] = []
    pages = 0
    cursor = None
    while True:
        params: dict[str, Any] = {"model": "parked", "limit": 500}
        if cursor:
            params["cursor"] = cursor
        resp = client.get("/v1/jobs", params=params)
        assert resp.status_code == 200
        assert len(resp.content) <= MAX_PAGE_BYTES + job_bound
        page = resp.json()
        assert all(len(json.dumps(j, ensure_ascii=False).encode()) <= job_bound
                   for j in page["data"])
        seen += [j["id"] for j in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen))
    assert made <= set(seen)
    assert pages >= 2  # the first page was cut by its size, far below `limit`
