"""Upload over HTTP -> S3 -> Celery/Redis -> worker -> Postgres -> poll, all real processes."""

from __future__ import annotations

import base64
import hashlib
import uuid

import httpx
from sqlalchemy import select

from shared.models import Job
from tests.helpers.images import png_bytes
from tests.helpers.services import Service, wait_terminal
from tests.helpers.stack import Stack, db_sessions
from tests.helpers.store import s3_client, store_location


def _s3_object(stack: Stack, key: str) -> bytes:
    bucket, prefix = store_location(stack.settings.store_url)
    return s3_client(stack.settings).get_object(Bucket=bucket, Key=f"{prefix}/{key}")["Body"].read()


def test_multipart_upload_runs_to_success(
    stack: Stack, client: httpx.Client, worker: Service
) -> None:
    image = png_bytes(seed=1)
    resp = client.post(
        "/v1/jobs",
        files={"image": ("cat.png", image, "image/png")},
        data={"prompt": "What is in this picture?", "max_tokens": "12", "stop": ["zzz"]},
    )
    assert resp.status_code == 202, resp.text
    created = resp.json()
    assert resp.headers["location"] == f"/v1/jobs/{created['id']}"
    assert created["status"] == "queued"
    assert created["params"]["max_tokens"] == 12

    job = wait_terminal(client, created["id"])
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1
    assert job["started_at"] and job["finished_at"]
    result = job["result"]
    assert result["prompt_tokens"] > 10  # the image expands into many vision tokens
    assert 1 <= result["completion_tokens"] <= 12
    assert result["finish_reason"] in ("stop", "length")

    with db_sessions(stack.settings)() as session:
        row = session.scalars(select(Job).where(Job.id == uuid.UUID(created["id"]))).one()
    assert row.result_text == result["text"]
    assert row.image_sha256 == hashlib.sha256(image).hexdigest()
    assert (row.image_width, row.image_height) == (448, 336)
    assert _s3_object(stack, row.image_key) == image


def test_json_base64_upload_runs_to_success(client: httpx.Client, worker: Service) -> None:
    image = png_bytes(320, 240, seed=2, fmt="JPEG")
    resp = client.post(
        "/v1/jobs",
        json={
            "image": {"base64": base64.b64encode(image).decode()},
            "prompt": "Describe it.",
            "max_tokens": 8,
            "temperature": 0.7,
            "top_p": 0.9,
            "top_k": 20,
            "seed": 7,
        },
    )
    assert resp.status_code == 202, resp.text
    job = wait_terminal(client, resp.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["image"]["format"] == "JPEG"
    assert job["params"]["seed"] == 7


def test_list_filters_and_paginates(client: httpx.Client, worker: Service) -> None:
    ids = []
    for i in range(5):
        resp = client.post(
            "/v1/jobs",
            files={"image": ("x.png", png_bytes(64, 64, seed=i), "image/png")},
            data={"prompt": f"list test {i}", "max_tokens": "2"},
        )
        ids.append(resp.json()["id"])
    for job_id in ids:
        wait_terminal(client, job_id)

    seen: list[str] = []
    cursor = None
    while True:
        params = {"status": "succeeded", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params).json()
        assert len(page["data"]) <= 2
        assert all(j["status"] == "succeeded" for j in page["data"])
        seen.extend(j["id"] for j in page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert set(ids) <= set(seen)
    assert len(seen) == len(set(seen)), "a job appeared on two pages"
    created = [client.get(f"/v1/jobs/{i}").json()["created_at"] for i in seen]
    assert created == sorted(created, reverse=True)

    assert client.get("/v1/jobs", params={"status": "running", "limit": 500}).status_code == 200
    bad = client.get("/v1/jobs", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_cursor"
    bad = client.get("/v1/jobs", params={"status": "nope"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"


def test_unknown_job_is_404(client: httpx.Client) -> None:
    resp = client.get(f"/v1/jobs/{uuid.uuid4()}")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"
    assert client.get("/v1/jobs/not-a-uuid").status_code == 422


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "store": "ok"}
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/v1/jobs" in spec["paths"] and "/v1/jobs/{job_id}" in spec["paths"]
