"""Each API call as data (method, path, body), and the retry rule; both clients use these,
so the sync and async clients differ only in how they wait and send."""

from __future__ import annotations

import base64
import json
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from vlmq.client.types import ApiError

# Worth another try: over a limit, or the server or a dependency briefly unavailable.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, Any] | None = None
    files: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None


def submit(
    prompt: str,
    image: bytes | str | Path | None = None,
    *,
    image_url: str | None = None,
    model: str | None = None,
    idempotency_key: str | None = None,
    **fields: Any,
) -> Call:
    """POST /v1/jobs. `image` is the bytes or a file path; `image_url` a data:, https:// or
    s3:// URL instead. Every submit carries an Idempotency-Key (a new one unless given), so
    a retried submit returns the first job instead of making a second."""
    if (image is None) == (image_url is None):
        raise ValueError("give exactly one of image or image_url")
    headers = {"Idempotency-Key": idempotency_key or f"vlmq-client-{uuid.uuid4()}"}
    params = {k: v for k, v in fields.items() if v is not None}
    if model is not None:
        params["model"] = model
    if image_url is not None:
        return Call("POST", "/v1/jobs", headers=headers,
                    json={"prompt": prompt, "image": {"url": image_url}, **params})
    data = image if isinstance(image, bytes) else Path(str(image)).read_bytes()
    name = "image" if isinstance(image, bytes) else Path(str(image)).name
    form = {k: ",".join(map(str, v)) if k == "webhook_events" else v for k, v in params.items()}
    for name in ("stop", "choices"):  # repeated form fields
        if isinstance(form.get(name), list):
            form[name] = list(form[name])
    if isinstance(form.get("response_format"), dict):  # a JSON form field
        form["response_format"] = json.dumps(form["response_format"])
    return Call("POST", "/v1/jobs", headers=headers, data={"prompt": prompt, **form},
                files={"image": (name, data, "application/octet-stream")})


def data_url(image: bytes, content_type: str = "image/png") -> str:
    return f"data:{content_type};base64,{base64.b64encode(image).decode()}"


def get(job_id: str, wait: float = 0) -> Call:
    params = {"wait": wait} if wait else None
    # The server holds a long poll up to `wait`; the HTTP timeout must outlast it.
    return Call("GET", f"/v1/jobs/{job_id}", params=params, timeout=wait + 30 if wait else None)


def cancel(job_id: str) -> Call:
    return Call("POST", f"/v1/jobs/{job_id}/cancel")


def list_jobs(cursor: str | None, limit: int, **filters: str | None) -> Call:
    params: dict[str, Any] = {k: v for k, v in filters.items() if v is not None}
    params["limit"] = limit
    if cursor:
        params["cursor"] = cursor
    return Call("GET", "/v1/jobs", params=params)


def upload_file(content: bytes | str | Path, purpose: str = "batch") -> Call:
    data = content if isinstance(content, bytes) else Path(str(content)).read_bytes()
    name = "input.jsonl" if isinstance(content, bytes) else Path(str(content)).name
    return Call("POST", "/v1/files", data={"purpose": purpose},
                files={"file": (name, data, "application/jsonl")})


def create_batch(input_file_id: str, completion_window: str = "24h",
                 metadata: dict[str, str] | None = None, webhook_url: str | None = None) -> Call:
    body: dict[str, Any] = {"input_file_id": input_file_id, "completion_window": completion_window,
                            "endpoint": "/v1/chat/completions"}
    if metadata:
        body["metadata"] = metadata
    if webhook_url:
        body["webhook_url"] = webhook_url
    return Call("POST", "/v1/batches", json=body)


def get_batch(batch_id: str) -> Call:
    return Call("GET", f"/v1/batches/{batch_id}")


def file_content(file_id: str) -> Call:
    return Call("GET", f"/v1/files/{file_id}/content")


def retry_delay(attempt: int, response: httpx.Response | None, backoff: float,
                backoff_max: float) -> float:
    """Retry-After when the server gave one; else exponential backoff with jitter."""
    if response is not None:
        after = response.headers.get("retry-after", "")
        if after.replace(".", "", 1).isdigit():
            return min(float(after), backoff_max)
    return min(backoff * 2 ** attempt, backoff_max) * random.uniform(0.5, 1.0)


def should_retry(response: httpx.Response) -> bool:
    return response.status_code in RETRY_STATUSES


def checked(response: httpx.Response) -> httpx.Response:
    if response.status_code < 400:
        return response
    try:
        error = response.json()["error"]
        code, message = str(error.get("code")), str(error.get("message"))
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message = "http_error", response.text[:500]
    raise ApiError(response.status_code, code, message)


def request_kwargs(call: Call, default_timeout: float) -> dict[str, Any]:
    return {"params": call.params, "json": call.json, "data": call.data, "files": call.files,
            "headers": call.headers, "timeout": call.timeout or default_timeout}
