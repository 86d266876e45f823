"""Bad input over HTTP: a 4xx with its own stable code, and no trace anywhere.

"No trace" means no job row, no stored object, nothing queued and nothing received by the
worker. The worker is running throughout, so a job stored by mistake would be claimed at
once; the count of claimed jobs catches that where the queue length cannot.
"""

from __future__ import annotations

import base64
import io
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from PIL import Image
from sqlalchemy import Engine, func, select

from shared.models import Job
from tests.helpers.images import png_bytes
from tests.helpers.services import Service, wait_terminal
from tests.helpers.stack import Stack
from tests.helpers.store import count_objects

MiB = 1024 * 1024
PROMPT = "Describe it."


@dataclass(frozen=True)
class Footprint:
    rows: int
    objects: int
    queued: int
    received: int


@pytest.fixture()
def footprint(
    stack: Stack, db_engine: Engine, s3: Any, redis_client: redis.Redis, worker: Service
) -> Callable[[], Footprint]:
    def measure() -> Footprint:
        with db_engine.connect() as conn:
            rows = conn.execute(select(func.count()).select_from(Job)).scalar_one()
        return Footprint(
            rows=rows,
            objects=count_objects(s3, stack.settings.store_url),
            queued=redis_client.llen(stack.settings.queue_name),
            received=_claimed(db_engine),
        )

    return measure


def _claimed(db: Engine) -> int:
    """Jobs a worker ever took: workers claim from the jobs table, nowhere else."""
    with db.connect() as conn:
        return conn.execute(select(func.count()).select_from(Job).where(Job.attempts > 0)
                            ).scalar_one()


def assert_refused(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert error["code"] == code, error
    assert error["message"]


# -- request builders -------------------------------------------------------------------------


def multipart(image: bytes | None = None, name: str = "photo.png", **fields: str) -> dict[str, Any]:
    """Always multipart, even with no file; `"<omit>"` drops a default field."""
    values = {"prompt": PROMPT, "max_tokens": "4", **fields}
    parts: list[tuple[str, tuple[str | None, bytes | str] | tuple[str, bytes, str]]] = [
        (k, (None, v)) for k, v in values.items() if v != "<omit>"
    ]
    if image is not None:
        parts.append(("image", (name, image, "application/octet-stream")))
    return {"files": parts}


def as_json(image: bytes | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": PROMPT, "max_tokens": 4, **fields}
    if image is not None:
        body["image"] = {"base64": base64.b64encode(image).decode()}
    return {"json": {k: v for k, v in body.items() if v != "<omit>"}}


def raw(content: bytes, content_type: str | None) -> dict[str, Any]:
    headers = {"content-type": content_type} if content_type else {}
    return {"content": content, "headers": headers}


def random_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def good_png() -> bytes:
    return png_bytes(64, 48)


def corrupt_jpeg() -> bytes:
    """A real JPEG's headers up to the start of scan, then random entropy-coded data."""
    data = png_bytes(64, 48, fmt="JPEG")
    sos = data.index(b"\xff\xda")
    header_end = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    return data[:header_end] + random_bytes(2000) + b"\xff\xd9"


def truncated_png() -> bytes:
    data = png_bytes(448, 336)
    return data[: len(data) * 2 // 3]


def jpeg_cut_in_its_headers() -> bytes:
    return png_bytes(64, 48, fmt="JPEG")[:300]


def pixel_bomb() -> bytes:
    """5000x5000 of one colour: 25 Mpx declared, a few KiB on disk."""
    buf = io.BytesIO()
    Image.new("1", (5000, 5000), 1).save(buf, format="PNG")
    assert len(buf.getvalue()) < 2 * MiB
    return buf.getvalue()


def ico_file() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, format="ICO")
    return buf.getvalue()


HTML = b"<!doctype html><html><head><title>x</title></head><body><img src=a.png></body></html>"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"

# Under the API's body cap (a job's images, here 8 of the 2 MiB image limit, * 4/3 + 256
# KiB) but over the image limit: refused by the image check. Over the body cap: refused
# before the body is read.
IMAGE_OVER_LIMIT = 2 * MiB + 50_000
BODY_OVER_CAP = 8 * 2 * MiB * 4 // 3 + 512 * 1024

CASES: list[tuple[str, Callable[[], dict[str, Any]], int, str]] = [
    ("corrupt-jpeg", lambda: multipart(corrupt_jpeg(), "photo.jpg"), 400, "corrupt_image"),
    ("truncated-png", lambda: multipart(truncated_png()), 400, "corrupt_image"),
    (
        "jpeg-cut-in-headers",
        lambda: multipart(jpeg_cut_in_its_headers(), "a.jpg"),
        400,
        "corrupt_image",
    ),
    ("empty-file", lambda: multipart(b""), 400, "empty_image"),
    (
        "text-named-jpg",
        lambda: multipart(b"just some notes\n" * 20, "notes.jpg"),
        400,
        "invalid_image",
    ),
    ("html-named-png", lambda: multipart(HTML, "page.png"), 400, "invalid_image"),
    ("pdf-named-jpg", lambda: multipart(PDF, "doc.jpg"), 400, "invalid_image"),
    ("ico-not-allowed", lambda: multipart(ico_file(), "icon.png"), 415, "unsupported_image_format"),
    ("pixel-bomb", lambda: multipart(pixel_bomb()), 400, "image_too_many_pixels"),
    ("json-pixel-bomb", lambda: as_json(pixel_bomb()), 400, "image_too_many_pixels"),
    (
        "image-over-limit-multipart",
        lambda: multipart(random_bytes(IMAGE_OVER_LIMIT)),
        413,
        "image_too_large",
    ),
    (
        "image-over-limit-json",
        lambda: as_json(random_bytes(IMAGE_OVER_LIMIT)),
        413,
        "image_too_large",
    ),
    (
        "body-over-cap-multipart",
        lambda: multipart(random_bytes(BODY_OVER_CAP)),
        413,
        "payload_too_large",
    ),
    ("body-over-cap-json", lambda: as_json(random_bytes(BODY_OVER_CAP)), 413, "payload_too_large"),
    ("missing-prompt", lambda: multipart(good_png(), prompt="<omit>"), 400, "missing_prompt"),
    ("empty-prompt", lambda: multipart(good_png(), prompt=""), 400, "missing_prompt"),
    ("whitespace-prompt", lambda: multipart(good_png(), prompt=" \n\t "), 400, "missing_prompt"),
    ("json-missing-prompt", lambda: as_json(good_png(), prompt="<omit>"), 400, "missing_prompt"),
    ("json-whitespace-prompt", lambda: as_json(good_png(), prompt="   "), 400, "missing_prompt"),
    ("prompt-too-long", lambda: multipart(good_png(), prompt="x" * 16_001), 400, "prompt_too_long"),
    ("missing-image", lambda: multipart(None), 400, "missing_image"),
    (
        "image-as-text-field",
        lambda: {"files": [*multipart(None)["files"], ("image", (None, "not a file"))]},
        400,
        "missing_image",
    ),
    ("json-missing-image", lambda: as_json(None), 400, "missing_image"),
    ("prompt-with-nul", lambda: multipart(good_png(), prompt="a\x00b"), 400, "invalid_prompt"),
    ("json-prompt-with-nul", lambda: as_json(good_png(), prompt="a\x00b"), 400, "invalid_prompt"),
    (
        "json-prompt-lone-surrogate",
        lambda: raw(b'{"prompt": "a\\ud800b", "image": {"base64": "eA=="}}', "application/json"),
        400,
        "invalid_json",
    ),
    ("unknown-model", lambda: multipart(good_png(), model="no-such-model"), 400, "unknown_model"),
    ("model-name-too-long", lambda: as_json(good_png(), model="m" * 300), 422, "validation_error"),
    (
        "form-model-name-too-long",
        lambda: multipart(good_png(), model="m" * 300),
        422,
        "validation_error",
    ),
    ("model-name-with-nul", lambda: as_json(good_png(), model="a\x00b"), 400, "unknown_model"),
    (
        "invalid-base64",
        lambda: {"json": {"prompt": PROMPT, "image": {"base64": "abc$%^"}}},
        400,
        "invalid_base64",
    ),
    (
        "non-ascii-base64",
        lambda: {"json": {"prompt": PROMPT, "image": {"base64": "ÿÿÿÿ"}}},
        400,
        "invalid_base64",
    ),
    (
        "empty-base64",
        lambda: {"json": {"prompt": PROMPT, "image": {"base64": ""}}},
        400,
        "empty_image",
    ),
    (
        "image-url-plain-http",
        lambda: {"json": {"prompt": PROMPT, "image": {"url": "http://x/a.png"}}},
        400,
        "image_url_refused",
    ),
    (
        "image-url-private-address",
        lambda: {"json": {"prompt": PROMPT, "image": {"url": "https://10.0.0.1/a.png"}}},
        400,
        "image_url_refused",
    ),
    (
        "invalid-json",
        lambda: raw(b'{"prompt": "hi", "image": ', "application/json"),
        400,
        "invalid_json",
    ),
    ("empty-json-body", lambda: raw(b"", "application/json"), 400, "invalid_json"),
    ("unknown-field", lambda: multipart(good_png(), colour="blue"), 400, "unknown_field"),
    ("json-unknown-field", lambda: as_json(good_png(), colour="blue"), 400, "unknown_field"),
    (
        "temperature-negative",
        lambda: multipart(good_png(), temperature="-1"),
        422,
        "validation_error",
    ),
    (
        "json-temperature-negative",
        lambda: as_json(good_png(), temperature=-1),
        422,
        "validation_error",
    ),
    ("max-tokens-zero", lambda: multipart(good_png(), max_tokens="0"), 422, "validation_error"),
    ("json-max-tokens-zero", lambda: as_json(good_png(), max_tokens=0), 422, "validation_error"),
    (
        "max-tokens-above-server-limit",
        lambda: multipart(good_png(), max_tokens="5000"),
        400,
        "max_tokens_too_large",
    ),
    (
        "json-max-tokens-above-server-limit",
        lambda: as_json(good_png(), max_tokens=5000),
        400,
        "max_tokens_too_large",
    ),
    ("top-p-2", lambda: multipart(good_png(), top_p="2"), 422, "validation_error"),
    ("json-top-p-2", lambda: as_json(good_png(), top_p=2), 422, "validation_error"),
    ("text-plain-body", lambda: raw(b"prompt=hi", "text/plain"), 415, "unsupported_media_type"),
    ("no-content-type", lambda: raw(b"hello", None), 415, "unsupported_media_type"),
    (
        "form-urlencoded",
        lambda: {"data": {"prompt": PROMPT, "image": "x"}},
        415,
        "unsupported_media_type",
    ),
    (
        "multipart-without-boundary",
        lambda: raw(b"--x\r\n", "multipart/form-data"),
        400,
        "invalid_multipart",
    ),
    (
        "nine-image-files",
        lambda: {"files": [*multipart(good_png())["files"],
                           *(("image", (f"{i}.png", good_png())) for i in range(8))]},
        400,
        "too_many_images",
    ),
]


@pytest.mark.parametrize(
    ("build", "status", "code"),
    [pytest.param(build, status, code, id=name) for name, build, status, code in CASES],
)
def test_bad_input_is_refused_without_trace(
    client: httpx.Client,
    footprint: Callable[[], Footprint],
    worker: Service,
    build: Callable[[], dict[str, Any]],
    status: int,
    code: str,
) -> None:
    before = footprint()
    resp = client.post("/v1/jobs", **build())
    assert_refused(resp, status, code)
    assert footprint() == before
    assert worker.proc.poll() is None


def test_streamed_body_over_cap_is_refused_without_trace(
    client: httpx.Client, footprint: Callable[[], Footprint]
) -> None:
    """Without Content-Length the cap is enforced while the body streams in."""
    chunk = random_bytes(64 * 1024)

    def body() -> Iterator[bytes]:
        for _ in range(BODY_OVER_CAP // len(chunk)):
            yield chunk

    before = footprint()
    resp = client.post("/v1/jobs", content=body(), headers={"content-type": "application/json"})
    assert "content-length" not in resp.request.headers
    assert_refused(resp, 413, "payload_too_large")
    assert footprint() == before


def test_worker_still_serves_after_bad_input(
    client: httpx.Client, footprint: Callable[[], Footprint], worker: Service
) -> None:
    """Runs after the refusals above: the same worker process still completes a good job."""
    before = footprint()
    resp = client.post("/v1/jobs", **multipart(good_png()))
    assert resp.status_code == 202, resp.text
    job = wait_terminal(client, resp.json()["id"])
    assert job["status"] == "succeeded", job
    after = footprint()
    assert (after.rows, after.objects, after.received) == (
        before.rows + 1,
        before.objects + 1,
        before.received + 1,
    )
    assert worker.proc.poll() is None
