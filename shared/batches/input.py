"""Reading a batch input file: JSONL, one request per line, streamed from the store.

The file is read twice, never held whole: once to validate every line (so a malformed
file fails before any job exists), then again to expand lines into jobs in chunks.
Blank lines are skipped; a request's `index` counts requests, not file lines, so both
passes and every resumed expansion agree on it. Errors name the file line (1-based).

Every value a line gives that ends up in a column (custom_id, body.model) is checked here
against that column, so a line can only ever fail validation, never the insert of its job;
and an error quotes at most a short prefix of what the client sent, so a batch's `errors`
stays small whatever the file holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from pydantic_core import from_json

from shared.errors import quoted
from shared.models import Batch, Job

_READ_CHUNK = 1024 * 1024
MAX_ERRORS = 100
# The columns a line's values are stored in; a longer value would fail the insert.
CUSTOM_ID_CHARS = Job.custom_id.type.length
MODEL_CHARS = min(Job.model.type.length, Batch.model.type.length)


@dataclass(frozen=True)
class LineError:
    code: str
    line: int | None
    message: str
    param: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "line": self.line, "message": self.message,
                "param": self.param}


@dataclass(frozen=True)
class Request:
    index: int  # 0-based among requests
    line: int  # 1-based file line
    custom_id: str
    body: dict[str, Any]


@dataclass
class Validated:
    total: int = 0
    model: str | None = None
    errors: list[LineError] = field(default_factory=list)


def file_lines(source: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(1-based line number, bytes) per line; None for a line longer than the limit."""
    pending = b""
    number = 0
    too_long = False
    while True:
        chunk = source.read(_READ_CHUNK)
        if not chunk:
            break
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            number += 1
            yield number, None if too_long or len(raw) > max_line_bytes else raw
            too_long = False
        if len(pending) > max_line_bytes:
            too_long, pending = True, b""
    if pending or too_long:
        yield number + 1, None if too_long else pending


def parse_line(line: int, raw: bytes, endpoint: str) -> Request | LineError:
    """A request of the batch, or what is wrong with the line. `index` is set by the caller."""
    try:
        # The parser of every JSON body: it refuses nesting past 200 levels and lone
        # surrogates (`\ud800`), which no text column can store.
        obj = from_json(raw)
    except ValueError:
        return LineError("invalid_json_line", line,
                         "this line is not valid JSON, or is nested too deeply")
    if not isinstance(obj, dict):
        return LineError("invalid_json_line", line, "each line must be a JSON object")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or not _storable(custom_id,
                                                                       CUSTOM_ID_CHARS):
        return LineError("invalid_custom_id", line,
                         f"custom_id must be a string of 1 to {CUSTOM_ID_CHARS} characters "
                         "without NUL", "custom_id")
    if obj.get("method") != "POST":
        return LineError("invalid_method", line, "method must be POST", "method")
    if obj.get("url") != endpoint:
        return LineError("invalid_url", line,
                         f"url {quoted(obj.get('url'))} does not match the batch's endpoint "
                         f"{endpoint!r}", "url")
    body = obj.get("body")
    if not isinstance(body, dict):
        return LineError("invalid_body", line, "body must be a JSON object", "body")
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not _storable(model, MODEL_CHARS)):
        return LineError("invalid_model", line,
                         f"body.model must be a string of at most {MODEL_CHARS} characters "
                         "without NUL", "body.model")
    return Request(index=-1, line=line, custom_id=custom_id, body=body)


def _storable(text: str, max_chars: int) -> bool:
    """Whether a Postgres text column of `max_chars` can hold `text` (it refuses NUL)."""
    return len(text) <= max_chars and "\x00" not in text


def requests(source: BinaryIO, endpoint: str, max_line_bytes: int) -> Iterator[Request]:
    """The requests of an already validated file, in order, with their index."""
    index = 0
    for line, raw in file_lines(source, max_line_bytes):
        if raw is None or not raw.strip():
            continue
        parsed = parse_line(line, raw, endpoint)
        if isinstance(parsed, Request):
            yield Request(index, parsed.line, parsed.custom_id, parsed.body)
            index += 1


def validate(source: BinaryIO, endpoint: str, *, max_lines: int,
             max_line_bytes: int) -> Validated:
    """Every structural problem of the file, up to MAX_ERRORS of them."""
    result = Validated()
    seen: set[str] = set()

    def error(err: LineError) -> bool:
        result.errors.append(err)
        return len(result.errors) >= MAX_ERRORS

    for line, raw in file_lines(source, max_line_bytes):
        if raw is None:
            if error(LineError("line_too_long", line,
                               f"the line is longer than {max_line_bytes} bytes")):
                break
            continue
        if not raw.strip():
            continue
        parsed = parse_line(line, raw, endpoint)
        if isinstance(parsed, LineError):
            if error(parsed):
                break
            continue
        result.total += 1
        if result.total > max_lines:
            error(LineError("too_many_lines", line,
                            f"a batch holds at most {max_lines} requests"))
            break
        if parsed.custom_id in seen:
            if error(LineError("duplicate_custom_id", line,
                               f"custom_id {quoted(parsed.custom_id)} is used more than once",
                               "custom_id")):
                break
        seen.add(parsed.custom_id)
        model = parsed.body.get("model")
        if isinstance(model, str) and model:
            if result.model is None:
                result.model = model
            elif model != result.model:
                if error(LineError("mixed_models", line,
                                   f"model {quoted(model)} differs from "
                                   f"{quoted(result.model)}; a batch runs one model",
                                   "body.model")):
                    break
    if result.total == 0 and not result.errors:
        result.errors.append(LineError("empty_file", None, "the input file has no requests"))
    return result
