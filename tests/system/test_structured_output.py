"""Structured output through the tiny model in vLLM, on every door: JSON-schema jobs by JSON
and multipart, a `choices` and a `regex` job in the same engine batches, a batch and a chat
completion through the official `openai` client in strict mode; and a constraint that does
not compile refused at submit with nothing stored. One vLLM worker for the module."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import httpx
import jsonschema
import pydantic
import pytest
from sqlalchemy import Engine, func, select

from shared.models import Job
from tests.helpers.echo_stack import batch_line, openai_client, upload, wait_batch
from tests.helpers.images import png_bytes
from tests.helpers.services import Service, start_worker, wait_terminal
from tests.helpers.stack import Stack
from tests.helpers.store import count_objects

MODEL = "tiny-qwen2-vl-structured"
LABELS = ["cat", "dog", "bird"]
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": LABELS},
                   "count": {"type": "integer", "minimum": 0, "maximum": 20}},
    "required": ["label", "count"],
    "additionalProperties": False,
}
# A second schema in the same batches: each request carries its own grammar.
OTHER_SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "size": {"enum": ["small", "large"]}},
    "required": ["ok", "size"],
    "additionalProperties": False,
}
MAX_TOKENS = 48


def response_format(schema: dict[str, Any], name: str = "answer") -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema,
                                                   "strict": True}}


def image_b64(seed: int) -> str:
    return base64.b64encode(png_bytes(224, 168, seed=seed)).decode()


@pytest.fixture(scope="module")
def so_stack(stack: Stack) -> Stack:
    return stack.with_env(model=MODEL, engine="vllm", enforce_eager="true",
                          max_batch_size="32", max_num_seqs="32", max_attempts="1")


@pytest.fixture(scope="module")
def vllm_worker(so_stack: Stack) -> Iterator[Service]:
    svc = start_worker(so_stack.env, so_stack.log_dir, name="worker-structured")
    yield svc
    svc.stop()


def submit_json(client: httpx.Client, seed: int, **fields: Any) -> str:
    resp = client.post("/v1/jobs", json={
        "prompt": f"What is in picture {seed}? Answer in JSON.", "model": MODEL,
        "max_tokens": MAX_TOKENS, "image": {"base64": image_b64(seed)}, **fields})
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def submit_form(client: httpx.Client, seed: int, data: dict[str, Any]) -> str:
    resp = client.post("/v1/jobs", files={"image": ("a.png", png_bytes(224, 168, seed=seed),
                                                    "image/png")},
                       data={"prompt": f"Classify picture {seed}.", "model": MODEL,
                             "max_tokens": str(MAX_TOKENS), **data})
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def test_fifty_schema_jobs_validate_beside_choices_and_regex_jobs(
    api: str, stack: Stack, vllm_worker: Service
) -> None:
    with httpx.Client(base_url=api, timeout=60, headers=stack.headers) as client, \
            ThreadPoolExecutor(8) as pool:
        schema_ids = list(pool.map(lambda i: submit_json(
            client, i, response_format=response_format(SCHEMA)), range(40)))
        # The multipart form: response_format as JSON text, choices as repeated parts.
        schema_ids += [submit_form(client, 100 + i, {
            "response_format": json.dumps(response_format(SCHEMA))}) for i in range(10)]
        other_ids = [submit_json(client, 200 + i, response_format=response_format(
            OTHER_SCHEMA, "other")) for i in range(4)]
        object_id = submit_json(client, 300, response_format={"type": "json_object"})
        choices_id = submit_form(client, 301, {"choices": ["yes", "no", "maybe not"]})
        regex_id = submit_json(client, 302, regex=r"[0-9]{3}-[A-Z]{2}")
        jobs = {i: wait_terminal(client, i, timeout=300)
                for i in [*schema_ids, *other_ids, object_id, choices_id, regex_id]}

    for job_id in schema_ids:
        job = jobs[job_id]
        assert job["status"] == "succeeded", job
        result = job["result"]
        assert result["json"] == json.loads(result["text"]), result
        jsonschema.validate(result["json"], SCHEMA)
        assert job["params"]["response_format"] == response_format(SCHEMA)
    for job_id in other_ids:
        jsonschema.validate(jobs[job_id]["result"]["json"], OTHER_SCHEMA)
    obj = jobs[object_id]["result"]
    assert obj["finish_reason"] == "length" or isinstance(obj["json"], dict), obj
    choice = jobs[choices_id]
    assert choice["result"]["text"] in ("yes", "no", "maybe not"), choice
    assert choice["result"]["json"] is None
    assert choice["params"]["choices"] == ["yes", "no", "maybe not"]
    assert re.fullmatch(r"[0-9]{3}-[A-Z]{2}", jobs[regex_id]["result"]["text"]), jobs[regex_id]


class Answer(pydantic.BaseModel):
    label: Literal["cat", "dog", "bird"]
    count: int = pydantic.Field(ge=0, le=20)


def test_a_batch_and_a_chat_completion_through_the_strict_openai_client(
    api: str, stack: Stack, control: Service, vllm_worker: Service
) -> None:
    url = f"data:image/png;base64,{image_b64(7)}"
    lines = [batch_line(f"line-{i}", MODEL, url, max_tokens=MAX_TOKENS,
                        response_format=response_format(SCHEMA)) for i in range(10)]
    lines.append(batch_line("bad-schema", MODEL, url, response_format=response_format(
        {"type": "nonsense"})))
    with openai_client(api, stack.api_key, timeout=120) as client:
        batch = client.batches.create(input_file_id=upload(client, lines),
                                      endpoint="/v1/chat/completions", completion_window="24h")
        done = wait_batch(client, batch.id, {"completed", "failed"}, timeout=300)
        assert done.status == "completed", done
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (10, 1)
        assert done.output_file_id is not None and done.error_file_id is not None
        outputs = [json.loads(x) for x in
                   client.files.content(done.output_file_id).text.splitlines()]
        errors = [json.loads(x) for x in
                  client.files.content(done.error_file_id).text.splitlines()]
        for line in outputs:
            content = line["response"]["body"]["choices"][0]["message"]["content"]
            jsonschema.validate(json.loads(content), SCHEMA)
        assert [e["custom_id"] for e in errors] == ["bad-schema"]
        assert errors[0]["response"]["body"]["error"]["code"] == "invalid_response_format"

        # The client's own structured-output helper: it sends a strict json_schema built
        # from the model and parses the answer back into it.
        completion = client.chat.completions.parse(
            model=MODEL, response_format=Answer, max_tokens=MAX_TOKENS,
            messages=[{"role": "user", "content": [
                {"type": "text", "text": "What is it, and how many?"},
                {"type": "image_url", "image_url": {"url": url}}]}],
        )
        parsed = completion.choices[0].message.parsed
        assert isinstance(parsed, Answer), completion


def test_a_constraint_that_does_not_compile_is_refused_with_nothing_stored(
    api: str, stack: Stack, db_engine: Engine, s3: Any
) -> None:
    """No worker is needed: the API compiles the constraint before anything is stored."""
    def footprint() -> tuple[int, int]:
        with db_engine.connect() as conn:
            jobs = conn.execute(select(func.count()).select_from(Job)).scalar_one()
        return jobs, count_objects(s3, stack.settings.store_url)

    deep: dict[str, Any] = {"type": "integer"}
    for _ in range(40):
        deep = {"type": "array", "items": deep}
    before = footprint()
    with httpx.Client(base_url=api, timeout=60, headers=stack.headers) as client:
        cases: list[tuple[httpx.Response, int, str]] = []

        def json_job(**fields: Any) -> httpx.Response:
            return client.post("/v1/jobs", json={"prompt": "p", "image": {
                "base64": image_b64(1)}, **fields})

        def form_job(data: dict[str, Any]) -> httpx.Response:
            return client.post("/v1/jobs", data={"prompt": "p", **data}, files={
                "image": ("a.png", png_bytes(32, 24), "image/png")})

        cases += [
            (json_job(response_format=response_format({"type": "nonsense"})), 400,
             "invalid_response_format"),
            (json_job(response_format=response_format({"type": "string", "pattern": "(["})),
             400, "invalid_response_format"),
            (json_job(response_format=response_format({"type": "number", "multipleOf": 2})),
             400, "invalid_response_format"),
            (json_job(regex="([a-z]"), 400, "invalid_response_format"),
            (form_job({"response_format": json.dumps(response_format({"$ref": "#/x"}))}), 400,
             "invalid_response_format"),
            (form_job({"response_format": "{not json"}), 400, "invalid_json"),
            (json_job(response_format=response_format(deep)), 422, "validation_error"),
            (json_job(response_format=response_format({"description": "x" * 20_000})), 422,
             "validation_error"),
            (json_job(choices=[]), 422, "validation_error"),
            (json_job(choices=["a", "a"]), 422, "validation_error"),
            (form_job({"choices": ["a", "a"]}), 422, "validation_error"),
            (json_job(choices=["a"], regex="a"), 422, "validation_error"),
            (json_job(regex="a\u0000"), 422, "validation_error"),
            (json_job(response_format={"type": "json_schema", "json_schema": [1]}), 422,
             "validation_error"),
            (client.post("/v1/chat/completions", json={
                "model": MODEL, "response_format": response_format({"type": "nonsense"}),
                "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "p"},
                    {"type": "image_url", "image_url": {
                        "url": f"data:image/png;base64,{image_b64(2)}"}}]}]}), 400,
             "invalid_response_format"),
        ]
        for resp, status, code in cases:
            assert resp.status_code == status, resp.text[:2000]
            assert resp.json()["error"]["code"] == code, resp.text[:2000]
            assert len(resp.content) < 2048, resp.text[:2000]
    time.sleep(0.2)
    assert footprint() == before
