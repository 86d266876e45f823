"""Batch files without a store: the input parser (shared/batches/input.py) over in-memory
bytes, and the output and error lines (shared/batches/output.py) for in-memory jobs."""

from __future__ import annotations

import io
import json
import uuid
from datetime import datetime, timezone

import pytest

from shared.batches.input import (
    CUSTOM_ID_CHARS,
    MAX_ERRORS,
    MODEL_CHARS,
    LineError,
    Request,
    Validated,
    file_lines,
    parse_line,
    requests,
    validate,
)
from shared.batches.output import line_for_job, missing_line, status_code_for
from shared.jobs.status import JobStatus
from shared.models import Job

ENDPOINT = "/v1/chat/completions"


def line(custom_id: object = "a", *, model: object = "m", method: str = "POST",
         url: str = ENDPOINT, body: object = None) -> dict[str, object]:
    if body is None:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return {"custom_id": custom_id, "method": method, "url": url, "body": body}


def jsonl(*lines: object) -> bytes:
    return b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n"
                    for x in lines)


def check(data: bytes, *, max_lines: int = 100, max_line_bytes: int = 10_000) -> Validated:
    return validate(io.BytesIO(data), ENDPOINT, max_lines=max_lines,
                    max_line_bytes=max_line_bytes)


def codes(result: Validated) -> list[tuple[str, int | None]]:
    return [(e.code, e.line) for e in result.errors]


# --- input: lines --------------------------------------------------------------------------


def test_file_lines_numbers_lines_and_keeps_a_last_line_without_newline() -> None:
    got = list(file_lines(io.BytesIO(b"a\n\nbc\nlast"), max_line_bytes=10))
    assert got == [(1, b"a"), (2, b""), (3, b"bc"), (4, b"last")]
    assert list(file_lines(io.BytesIO(b""), max_line_bytes=10)) == []


def test_file_lines_marks_long_lines_and_goes_on() -> None:
    data = b"ok\n" + b"x" * 50 + b"\nfine\n" + b"y" * 50
    got = list(file_lines(io.BytesIO(data), max_line_bytes=10))
    assert got == [(1, b"ok"), (2, None), (3, b"fine"), (4, None)]


@pytest.mark.parametrize(
    ("raw", "code", "param"),
    [
        (b"{not json", "invalid_json_line", None),
        (b'"\\ud800"', "invalid_json_line", None),
        (b"[" * 300 + b"]" * 300, "invalid_json_line", None),  # nested past 200
        (b"[1, 2]", "invalid_json_line", None),
        (json.dumps(line(None)).encode(), "invalid_custom_id", "custom_id"),
        (json.dumps(line("")).encode(), "invalid_custom_id", "custom_id"),
        (json.dumps(line(7)).encode(), "invalid_custom_id", "custom_id"),
        (json.dumps(line("a\x00b")).encode(), "invalid_custom_id", "custom_id"),
        (json.dumps(line("c" * (CUSTOM_ID_CHARS + 1))).encode(), "invalid_custom_id",
         "custom_id"),
        (json.dumps(line(method="GET")).encode(), "invalid_method", "method"),
        (json.dumps(line(url="/v1/embeddings")).encode(), "invalid_url", "url"),
        (json.dumps(line(body=[1])).encode(), "invalid_body", "body"),
        (json.dumps(line(model=5)).encode(), "invalid_model", "body.model"),
        (json.dumps(line(model="m" * (MODEL_CHARS + 1))).encode(), "invalid_model",
         "body.model"),
    ],
)
def test_parse_line_refusals(raw: bytes, code: str, param: str | None) -> None:
    parsed = parse_line(12, raw, ENDPOINT)
    assert isinstance(parsed, LineError)
    assert (parsed.code, parsed.line, parsed.param) == (code, 12, param)
    assert parsed.as_dict() == {"code": code, "line": 12, "message": parsed.message,
                                "param": param}


def test_parse_line_accepts_a_request_and_an_absent_model() -> None:
    parsed = parse_line(3, json.dumps(line("id-1")).encode(), ENDPOINT)
    assert parsed == Request(index=-1, line=3, custom_id="id-1", body=line("id-1")["body"])
    no_model = parse_line(4, json.dumps(line(body={"messages": []})).encode(), ENDPOINT)
    assert isinstance(no_model, Request)
    assert isinstance(parse_line(5, json.dumps(line("c" * CUSTOM_ID_CHARS)).encode(), ENDPOINT),
                      Request)


def test_an_error_quotes_only_a_short_prefix_of_what_was_sent() -> None:
    parsed = parse_line(1, json.dumps(line(url="/x" * 5000)).encode(), ENDPOINT)
    assert isinstance(parsed, LineError) and len(parsed.message) < 300


# --- input: the whole file -----------------------------------------------------------------


def test_a_valid_file_counts_requests_and_names_its_model() -> None:
    result = check(jsonl(line("a"), b"", b"   ", line("b"), line("c", model=None)))
    assert (result.total, result.model, result.errors) == (3, "m", [])


def test_requests_are_indexed_among_requests_not_lines() -> None:
    data = jsonl(b"", line("a"), b"", line("b"))
    got = list(requests(io.BytesIO(data), ENDPOINT, max_line_bytes=10_000))
    assert [(r.index, r.line, r.custom_id) for r in got] == [(0, 2, "a"), (1, 4, "b")]


def test_every_problem_is_reported_with_its_line() -> None:
    result = check(jsonl(line("a"), b"{oops", line("a"), line("b", model="other"),
                         line("c", method="PUT")))
    assert codes(result) == [("invalid_json_line", 2), ("duplicate_custom_id", 3),
                             ("mixed_models", 4), ("invalid_method", 5)]
    assert "'a'" in result.errors[1].message


def test_an_empty_file_is_an_error() -> None:
    for data in (b"", b"\n\n  \n"):
        assert codes(check(data)) == [("empty_file", None)]


def test_a_long_line_is_an_error_not_a_crash() -> None:
    result = check(jsonl(line("a"), line("b", body={"messages": "x" * 500})), max_line_bytes=200)
    assert codes(result) == [("line_too_long", 2)]
    assert result.total == 1


def test_too_many_lines_stops_the_count() -> None:
    result = check(jsonl(*(line(f"id{i}") for i in range(5))), max_lines=3)
    assert codes(result) == [("too_many_lines", 4)]


def test_errors_stop_at_the_cap() -> None:
    result = check(b"{bad\n" * (MAX_ERRORS + 50))
    assert len(result.errors) == MAX_ERRORS
    assert result.errors[-1].line == MAX_ERRORS


# --- output lines --------------------------------------------------------------------------

CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def job(status: JobStatus, **fields: object) -> Job:
    return Job(id=uuid.UUID(int=0xABC), custom_id="req-1", model="m", status=status.value,
               created_at=CREATED, **fields)


def test_a_succeeded_line_is_a_chat_completion() -> None:
    is_output, text = line_for_job(job(JobStatus.succeeded, result_text="a cat",
                                       finish_reason="stop", prompt_tokens=10,
                                       completion_tokens=2))
    assert is_output and text.endswith("\n") and "\n" not in text[:-1]
    got = json.loads(text)
    request_id = uuid.UUID(int=0xABC).hex
    assert got["id"] == f"batch_req_{request_id}" and got["custom_id"] == "req-1"
    assert got["error"] is None
    response = got["response"]
    assert (response["status_code"], response["request_id"]) == (200, request_id)
    body = response["body"]
    assert body["object"] == "chat.completion" and body["created"] == int(CREATED.timestamp())
    assert body["choices"][0]["message"]["content"] == "a cat"
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}


@pytest.mark.parametrize(("code", "status"), [("invalid_request", 400), ("image_fetch_failed", 400),
                                              ("engine_error", 500), ("worker_lost", 500),
                                              ("job_timeout", 500)])
def test_a_failed_line_carries_the_jobs_error(code: str, status: int) -> None:
    is_output, text = line_for_job(job(JobStatus.failed, error_code=code,
                                       error_message="it broke"))
    assert not is_output
    response = json.loads(text)["response"]
    assert response["status_code"] == status == status_code_for(code)
    assert response["body"]["error"]["code"] == code
    assert response["body"]["error"]["message"] == "it broke"


def test_a_failed_line_without_a_code_is_an_internal_error() -> None:
    _, text = line_for_job(job(JobStatus.failed))
    response = json.loads(text)["response"]
    assert response["status_code"] == 500
    assert response["body"]["error"]["code"] == "internal_error"


@pytest.mark.parametrize(
    ("status", "error_code", "expected"),
    [
        (JobStatus.cancelled, "cancelled", "batch_cancelled"),
        (JobStatus.cancelled, "batch_failed", "batch_failed"),
        (JobStatus.expired, None, "batch_expired"),
        (JobStatus.expired, "batch_cancelled", "batch_cancelled"),
    ],
)
def test_a_line_that_never_ran_has_no_response(status: JobStatus, error_code: str | None,
                                               expected: str) -> None:
    is_output, text = line_for_job(job(status, error_code=error_code))
    got = json.loads(text)
    assert not is_output and got["response"] is None
    assert got["error"]["code"] == expected and got["custom_id"] == "req-1"


def test_missing_line_keeps_non_ascii_as_is() -> None:
    text = missing_line("ключ", "batch_expired", "r1")
    assert "ключ" in text and json.loads(text)["id"] == "batch_req_r1"
