"""The body of a webhook: a Standard Webhooks envelope around the public job object.

Receivers should not have to accept large bodies, so a body over the bound first loses the
job's structured-output constraint and `result.json` (the text repeats it), then its long
text fields are cut, longest first, until it fits; a cut payload says so and links to the
full job.
"""

from __future__ import annotations

import json
from typing import Any

from shared.jobs.params import STRUCTURED_FIELDS
from shared.jobs.view import JobOut
from shared.models import Job
from shared.timeutil import as_utc, utcnow

# Fields that can be long, in the order they are cut: (path to the field's parent, key).
_CUTTABLE: tuple[tuple[tuple[str, ...], str], ...] = (
    (("result",), "text"),
    ((), "prompt"),
    (("error",), "message"),
)
_CUT_MARK = "…"


def job_link(job_id: object, public_url: str | None) -> str:
    path = f"/v1/jobs/{job_id}"
    return f"{public_url.rstrip('/')}{path}" if public_url else path


def build_payload(job: Job, event: str, *, public_url: str | None, max_bytes: int) -> str:
    moment = as_utc(job.finished_at) if job.finished_at else utcnow()
    data: dict[str, Any] = JobOut.from_row(job).model_dump(mode="json")
    data["url"] = job_link(job.id, public_url)
    data["truncated"] = False
    envelope = {"type": event, "timestamp": moment.isoformat(), "data": data}
    body = _dump(envelope)
    for drop in _DROPPABLE:
        if len(body.encode()) <= max_bytes:
            return body
        if drop(data):
            data["truncated"] = True
            body = _dump(envelope)
    while len(body.encode()) > max_bytes and _cut_longest(data, len(body.encode()) - max_bytes):
        data["truncated"] = True
        body = _dump(envelope)
    return body


def _drop_constraint(data: dict[str, Any]) -> bool:
    """The job's structured-output constraint (a schema may take most of the budget): the
    receiver sent it, and the linked job holds it."""
    params = data.get("params")
    if not isinstance(params, dict):
        return False
    found = [k for k in STRUCTURED_FIELDS if k in params]
    for key in found:
        del params[key]
    return bool(found)


def _drop_parsed_json(data: dict[str, Any]) -> bool:
    """`result.json` repeats `result.text` parsed; the text alone still carries it."""
    result = data.get("result")
    if isinstance(result, dict) and result.get("json") is not None:
        result["json"] = None
        return True
    return False


# Whole values dropped, in this order, before any text is cut.
_DROPPABLE = (_drop_constraint, _drop_parsed_json)


def _dump(envelope: dict[str, Any]) -> str:
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)


def _cut_longest(data: dict[str, Any], excess_bytes: int) -> bool:
    """Shortens the longest cuttable field by at least `excess_bytes` of JSON; False if none
    is left to cut."""
    fields = []
    for parents, key in _CUTTABLE:
        holder: Any = data
        for name in parents:
            holder = holder.get(name) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and isinstance(holder.get(key), str) and holder[key]:
            fields.append((_json_size(holder[key]), holder, key))
    if not fields:
        return False
    size, holder, key = max(fields, key=lambda f: f[0])
    holder[key] = _prefix_within(holder[key], size - excess_bytes - _json_size(_CUT_MARK))
    return True


def _json_size(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False).encode())


def _prefix_within(text: str, budget: int) -> str:
    """The longest prefix of `text` (plus the cut mark) whose JSON takes at most `budget`
    bytes; found by bisection, as characters vary from 1 to 6 bytes once escaped."""
    low, high = 0, len(text) - 1
    while low < high:
        mid = (low + high + 1) // 2
        if _json_size(text[:mid]) <= budget:
            low = mid
        else:
            high = mid - 1
    return text[:low] + _CUT_MARK if low else ""
