"""Structured output requests: their shapes and bounds, the compile check intake runs, the
parsed result, and the engines that cannot constrain refusing rather than ignoring them."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from shared.chat import parse_chat_request
from shared.errors import InvalidInput
from shared.jobs.params import GenerationParams
from shared.jobs.status import JobStatus
from shared.jobs.structured import (
    MAX_CHOICE_CHARS,
    MAX_CHOICES,
    MAX_CONSTRAINT_BYTES,
    MAX_SCHEMA_DEPTH,
    check_compiles,
    constraint_kind,
    parsed_json,
    unsupported_schema_feature,
)
from shared.jobs.view import JobOut
from shared.models import Job
from shared.webhooks.payload import build_payload
from worker.engines.base import GenerationRequest, RequestRejected
from worker.engines.echo_backend import EchoBackend, TimedEchoBackend

LABEL_SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["cat", "dog", "bird"]},
                   "count": {"type": "integer", "minimum": 0, "maximum": 20}},
    "required": ["label", "count"],
    "additionalProperties": False,
}


def schema_format(schema: Any, **spec: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, **spec}}


def stored(**fields: Any) -> dict[str, Any]:
    return GenerationParams.model_validate(fields).stored()


# --- shapes and bounds (a 422 like any other field) ----------------------------------------

def test_each_kind_is_stored_as_given_and_plain_params_are_unchanged() -> None:
    assert stored() == {"max_tokens": None, "temperature": 0.0, "top_p": 1.0, "top_k": -1,
                        "seed": None, "stop": []}
    params = stored(response_format=schema_format(LABEL_SCHEMA, strict=True))
    assert params["response_format"] == schema_format(LABEL_SCHEMA, strict=True)
    assert constraint_kind(params) == "json_schema"
    assert stored(response_format={"type": "json_object"})["response_format"] == {
        "type": "json_object"}
    assert stored(choices=["yes", "no"])["choices"] == ["yes", "no"]
    assert constraint_kind(stored(regex=r"\d{3}")) == "regex"
    # OpenAI's default: no constraint, nothing stored.
    assert "response_format" not in stored(response_format={"type": "text"})


def test_schema_property_order_is_kept() -> None:
    """Properties are generated in the schema's order: storage must not reorder them."""
    schema = {"type": "object", "properties": {"zeta": {"type": "integer"},
                                               "alpha": {"type": "integer"}}}
    kept = stored(response_format=schema_format(schema))["response_format"]
    assert list(kept["json_schema"]["schema"]["properties"]) == ["zeta", "alpha"]


@pytest.mark.parametrize("fields", [
    {"choices": ["a"], "regex": "a"},
    {"choices": ["a"], "response_format": {"type": "json_object"}},
    {"choices": []},
    {"choices": ["a", "a"]},
    {"choices": [""]},
    {"choices": ["a\x00"]},
    {"choices": ["x" * (MAX_CHOICE_CHARS + 1)]},
    {"choices": [f"c{i}" for i in range(MAX_CHOICES + 1)]},
    {"choices": ["\x01" * 200 + f"{i:03d}" for i in range(MAX_CHOICES)]},  # over the bytes
    {"regex": ""},
    {"regex": "a\x00"},
    {"regex": "a" * 5000},
    {"response_format": {"type": "json_schema"}},
    {"response_format": {"type": "json_schema", "json_schema": {"schema": [1]}}},
    {"response_format": {"type": "json_schema", "json_schema": {"schema": "x"}}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}},
    {"response_format": {"type": "json_schema", "json_schema": {"schema": {}, "extra": 1}}},
    {"response_format": schema_format({"enum": ["\x00"]})},
    {"response_format": schema_format({"description": "x" * (MAX_CONSTRAINT_BYTES + 1)})},
    {"response_format": {"type": "xml"}},
    {"response_format": "json_object"},
])
def test_bad_shapes_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        GenerationParams.model_validate(fields)


def test_a_deep_schema_is_refused() -> None:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(MAX_SCHEMA_DEPTH):
        schema = {"type": "object", "properties": {"a": schema}}
    with pytest.raises(ValidationError, match="nests deeper"):
        GenerationParams.model_validate({"response_format": schema_format(schema)})


# --- the compile check (a 400 at intake) ---------------------------------------------------

@pytest.mark.parametrize("fields", [
    {"response_format": schema_format(LABEL_SCHEMA)},
    {"response_format": schema_format({"type": "array", "items": {"type": "number"}})},
    {"response_format": {"type": "json_object"}},
    {"choices": ["a \"quoted\" label", "back\\slash", "new\nline"]},
    {"regex": r"[0-9]{3}-[0-9]{4}"},
    {},
])
def test_good_constraints_compile(fields: dict[str, Any]) -> None:
    check_compiles(stored(**fields))


@pytest.mark.parametrize("fields, says", [
    ({"response_format": schema_format({"type": "nonsense"})}, "nonsense"),
    ({"response_format": schema_format({"$ref": "#/defs/missing"})}, "defs"),
    ({"response_format": schema_format({"type": "string", "pattern": "("})}, "parenthesis"),
    ({"response_format": schema_format({"type": "number", "multipleOf": 3})}, "multipleOf"),
    ({"response_format": schema_format({"type": "string", "format": "color"})}, "format"),
    ({"regex": "(unclosed"}, "regex"),
])
def test_constraints_that_do_not_compile_are_refused(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidInput) as err:
        check_compiles(stored(**fields))
    assert err.value.code == "invalid_response_format"
    assert says in err.value.message
    assert "/project/cpp" not in err.value.message  # xgrammar's source location is cut
    assert len(err.value.message) < 600


SCHEMAS_FOR_PARITY: list[Any] = [
    LABEL_SCHEMA,
    {"type": "integer", "multipleOf": 2},
    {"type": ["number", "null"], "multipleOf": 2},
    {"type": "array", "uniqueItems": True},
    {"type": "array", "items": {"type": "array", "contains": {"type": "string"}}},
    {"type": "string", "format": "email"},
    {"type": "string", "format": "color"},
    {"type": "string", "pattern": "a+", "maxLength": 3},
    {"type": "object", "propertyNames": {"pattern": "a"}, "properties": {}},
    {"type": "object", "propertyNames": {"pattern": "a", "maxLength": 2}},
    {"type": "object", "propertyNames": {}, "unevaluatedProperties": False},
    {"type": "object", "patternProperties": {"a": {}, "b": {}}},
    {"type": "object", "patternProperties": {"a": {}}, "properties": {}},
    {"allOf": [{"type": "string"}, {"enum": ["a"]}]},
    {"anyOf": [{"type": "object", "properties": {"x": {"type": "integer", "multipleOf": 5}}}]},
]


@pytest.mark.parametrize("schema", SCHEMAS_FOR_PARITY)
def test_unsupported_features_match_the_engines_check(schema: Any) -> None:
    """Intake refuses exactly the schemas vLLM's xgrammar backend would refuse."""
    backend = pytest.importorskip("vllm.v1.structured_output.backend_xgrammar")
    assert (unsupported_schema_feature(schema) is not None) == (
        backend.has_xgrammar_unsupported_json_features(schema))


def test_without_xgrammar_the_shape_checks_still_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slim API (no xgrammar) still refuses what it can tell without compiling."""
    import shared.jobs.structured as structured

    monkeypatch.setattr(structured, "_xgr", None)
    monkeypatch.setattr(structured, "_xgr_missing", True)
    check_compiles(stored(response_format=schema_format({"type": "nonsense"})))  # passes here
    with pytest.raises(InvalidInput):
        check_compiles(stored(regex="(unclosed"))
    with pytest.raises(InvalidInput):
        check_compiles(stored(response_format=schema_format({"type": "integer",
                                                             "multipleOf": 2})))


# --- the result ----------------------------------------------------------------------------

def finished(params: dict[str, Any], text: str, finish_reason: str = "stop") -> Job:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return Job(
        id=uuid.uuid4(), status=JobStatus.succeeded, model="m", prompt="p", params=params,
        image_url="https://example.com/a.png", attempts=1, priority=5, created_at=now,
        started_at=now, finished_at=now, result_text=text, prompt_tokens=3,
        completion_tokens=4, finish_reason=finish_reason, webhook_url="https://example.com/h",
    )


def test_the_result_carries_the_parsed_json() -> None:
    params = stored(max_tokens=32, response_format=schema_format(LABEL_SCHEMA))
    out = JobOut.from_row(finished(params, '{"label": "cat", "count": 2}'))
    body = json.loads(out.model_dump_json())
    assert body["result"]["json"] == {"label": "cat", "count": 2}
    assert body["result"]["text"] == '{"label": "cat", "count": 2}'
    # Cut short by max_tokens: the text stays, the value is null, finish_reason says why.
    cut = json.loads(JobOut.from_row(finished(params, '{"label": "ca', "length"))
                     .model_dump_json())
    assert cut["result"]["json"] is None and cut["result"]["finish_reason"] == "length"
    # Other jobs: null, even when their text happens to be JSON.
    for other in (stored(), stored(choices=["1", "2"])):
        plain = json.loads(JobOut.from_row(finished(other, "1")).model_dump_json())
        assert plain["result"]["json"] is None
    assert parsed_json({"response_format": {"type": "json_object"}}, "{}") == {}


def test_a_webhook_over_its_bound_drops_the_schema_before_cutting_text() -> None:
    big = {"type": "object", "description": "d" * 12_000, "properties": {"a": {"type": "integer"}}}
    params = stored(response_format=schema_format(big))
    job = finished(params, '{"a": 1}')
    body = json.loads(build_payload(job, "job.succeeded", public_url=None, max_bytes=8192))
    assert body["data"]["truncated"] is True
    assert "response_format" not in body["data"]["params"]
    assert body["data"]["result"] == {**body["data"]["result"], "text": '{"a": 1}',
                                      "json": {"a": 1}}


# --- the OpenAI door -----------------------------------------------------------------------

def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is it?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}], **fields}


def test_chat_response_format_becomes_the_jobs_params() -> None:
    fmt = schema_format(LABEL_SCHEMA, strict=True)
    assert parse_chat_request(chat(response_format=fmt)).params["response_format"] == fmt
    assert "response_format" not in parse_chat_request(
        chat(response_format={"type": "text"})).params
    assert parse_chat_request(chat(choices=["a", "b"])).params["choices"] == ["a", "b"]
    with pytest.raises(InvalidInput) as err:
        parse_chat_request(chat(response_format={"type": "json_schema"}))
    assert err.value.code == "invalid_request" and "response_format" in err.value.message


# --- engines without constrained decoding refuse ------------------------------------------

def request(params: dict[str, Any], rid: str) -> GenerationRequest:
    return GenerationRequest(request_id=rid, prompt="p", image=Image.new("RGB", (8, 8)),
                             params={"max_tokens": 4, **params})


@pytest.mark.parametrize("simulated", [False, True])
def test_the_echo_engine_refuses_constrained_jobs(simulated: bool) -> None:
    backend = TimedEchoBackend(step_ms=1.0, max_num_seqs=4) if simulated else EchoBackend()
    refused = backend.add([request({}, "plain"), request({"choices": ["a"]}, "classify"),
                           request({"regex": "a"}, "regex")])
    assert [rid for rid, _ in refused] == ["classify", "regex"]
    for _, exc in refused:
        assert isinstance(exc, RequestRejected)
        assert exc.code == "structured_output_unsupported"
        assert "VLMQ_ENGINE=vllm" in exc.message
    assert backend.num_unfinished() == 1


def test_vllm_sampling_params_carry_each_constraint() -> None:
    pytest.importorskip("vllm")
    from worker.engines.vllm_backend import _structured_outputs

    assert _structured_outputs(stored()) is None
    so = _structured_outputs(stored(response_format=schema_format(LABEL_SCHEMA)))
    assert so.json == LABEL_SCHEMA
    assert _structured_outputs(stored(response_format={"type": "json_object"})).json_object
    assert _structured_outputs(stored(choices=["a", "b"])).choice == ["a", "b"]
    assert _structured_outputs(stored(regex="a+")).regex == "a+"


def test_the_transformers_engine_refuses_constrained_jobs() -> None:
    """Refused before the processor sees it, so no model is needed to check it."""
    pytest.importorskip("transformers")
    from worker.engines.transformers_backend import TransformersBackend

    backend = TransformersBackend.__new__(TransformersBackend)
    backend._pending = []
    refused = backend.add([request({"response_format": {"type": "json_object"}}, "json")])
    assert [(rid, exc.code) for rid, exc in refused  # type: ignore[union-attr]
            ] == [("json", "structured_output_unsupported")]
    assert backend.num_unfinished() == 0
