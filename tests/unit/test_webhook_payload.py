"""Webhook bodies stay under the size limit by cutting long text, and say so."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest

from shared.jobs.status import JobStatus
from shared.models import Job
from shared.webhooks.payload import build_payload

LIMIT = 16 * 1024


def finished_job(text: str, prompt: str = "describe") -> Job:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return Job(
        id=uuid.uuid4(), status=JobStatus.succeeded, model="m", prompt=prompt,
        params={"max_tokens": 4}, image_key="k", image_sha256="0" * 64, image_bytes=10,
        image_format="PNG", image_width=4, image_height=4, attempts=1, priority=5,
        created_at=now, started_at=now, finished_at=now, result_text=text, prompt_tokens=3,
        completion_tokens=4, finish_reason="stop", webhook_url="https://example.com/h",
    )


def test_small_payload_is_the_whole_job() -> None:
    job = finished_job("a cat")
    body = json.loads(build_payload(job, "job.succeeded", public_url=None, max_bytes=LIMIT))
    assert body["type"] == "job.succeeded"
    assert body["timestamp"] == "2026-01-01T00:00:00+00:00"
    assert body["data"]["result"]["text"] == "a cat"
    assert body["data"]["truncated"] is False
    assert body["data"]["url"] == f"/v1/jobs/{job.id}"


@pytest.mark.parametrize(
    "text",
    ["x" * 100_000, "é" * 50_000, "\x01" * 40_000, "猫" * 30_000],
    ids=["ascii", "two-byte", "json-escaped", "three-byte"],
)
def test_long_result_is_cut_to_fit(text: str) -> None:
    job = finished_job(text, prompt="p" * 10_000)
    raw = build_payload(job, "job.succeeded", public_url="https://vlmq.example.com/",
                        max_bytes=LIMIT)
    assert len(raw.encode()) <= LIMIT
    data = json.loads(raw)["data"]
    assert data["truncated"] is True
    assert data["url"] == f"https://vlmq.example.com/v1/jobs/{job.id}"
    kept = data["result"]["text"]
    assert kept.endswith("…") and text.startswith(kept[:-1])
    assert data["prompt"] == "p" * 10_000  # the longest field is cut first
