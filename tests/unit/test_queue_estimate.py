"""A queued job's place in line and its estimate: while no worker serves its model (a
worker still loading its model included), "waiting for a worker" with the model's last
cold start as the estimate, or none if never measured; from the model's recent throughput
once one does."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from shared import workers_repo
from shared.db import make_engine, make_session_factory
from shared.jobs import repo as jobs_repo
from shared.models import Job, Worker
from shared.settings import Settings
from shared.tenancy import repo as tenancy_repo
from shared.timeutil import utcnow
from tests.helpers.embedded import embedded_settings
from tests.helpers.images import png_bytes

MODEL = "tiny-qwen2-vl"
TTL = 20.0


@pytest.fixture()
def settings(state_root: Path) -> Settings:
    return embedded_settings(state_root, worker_ttl_seconds=TTL)


@pytest.fixture()
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings)
    yield make_session_factory(engine)
    engine.dispose()


def job_row(status: str, **extra: object) -> Job:
    return Job(id=uuid.uuid4(), tenant_id="default", status=status, model=MODEL, prompt="p",
               params={}, image_key="k", image_sha256="0" * 64, image_bytes=1,
               image_format="PNG", image_width=1, image_height=1, **extra)


def worker_row(seen_seconds_ago: float) -> Worker:
    seen = utcnow() - timedelta(seconds=seen_seconds_ago)
    return Worker(id=f"w-{uuid.uuid4().hex[:6]}", model=MODEL, engine="vllm", queue="q",
                  max_batch_size=8, started_at=seen, last_seen_at=seen)


def test_with_no_live_worker_there_is_no_eta_and_the_job_says_it_waits(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        # Plenty of recent throughput, but the only worker stopped heartbeating.
        session.add_all([job_row("succeeded", finished_at=utcnow()) for _ in range(3)])
        session.add(worker_row(seen_seconds_ago=TTL * 3))
        waiting = job_row("queued")
        session.add(waiting)
    with sessions() as session:
        estimate = jobs_repo.queue_estimate(session, waiting, TTL)
    assert estimate.position == 0
    assert estimate.eta_seconds is None
    assert estimate.waiting_for_worker


def test_scaled_to_zero_the_eta_is_the_models_last_cold_start(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        workers_repo.record_cold_start(session, MODEL, 95.0)
        workers_repo.record_cold_start(session, "other-model", 5.0)
    with sessions.begin() as session:  # the last measured counts
        workers_repo.record_cold_start(session, MODEL, 41.5)
        waiting = job_row("queued")
        session.add(waiting)
    with sessions() as session:
        estimate = jobs_repo.queue_estimate(session, waiting, TTL)
        assert workers_repo.cold_starts(session) == {MODEL: 41.5, "other-model": 5.0}
    assert estimate.waiting_for_worker and estimate.eta_seconds == 41.5
    with sessions.begin() as session:  # once a worker is live, throughput decides
        session.add(worker_row(seen_seconds_ago=0))
    with sessions() as session:
        live = jobs_repo.queue_estimate(session, waiting, TTL)
    assert not live.waiting_for_worker and live.eta_seconds is None


def test_with_a_live_worker_the_eta_comes_from_recent_throughput(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        session.add_all([job_row("succeeded", finished_at=utcnow()) for _ in range(3)])
        session.add(worker_row(seen_seconds_ago=1))
        ahead, waiting = job_row("queued", priority=1), job_row("queued", priority=5)
        session.add_all([ahead, waiting])
    with sessions() as session:
        estimate = jobs_repo.queue_estimate(session, waiting, TTL, window_seconds=300)
    # Three done in the last 300 s is one per 100 s; this job is second in line.
    assert estimate.position == 1
    assert estimate.eta_seconds == pytest.approx(200)
    assert not estimate.waiting_for_worker


def api_keys(settings: Settings, *tenants: str) -> list[str]:
    """A new API key for each tenant, in order."""
    engine = make_engine(settings)
    try:
        with make_session_factory(engine).begin() as session:
            return [tenancy_repo.create_key(session, tenant, "test", False)[1]
                    for tenant in tenants]
    finally:
        engine.dispose()


def test_get_says_a_queued_job_waits_for_a_worker(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        key, = api_keys(settings, "eta")
        client.headers["Authorization"] = f"Bearer {key}"
        job = client.post("/v1/jobs", data={"prompt": "Anyone there?"},
                          files={"image": ("a.png", png_bytes(32, 32), "image/png")}).json()
        read = client.get(f"/v1/jobs/{job['id']}").json()
    assert read["status"] == "queued"
    assert read["queue_position"] == 0
    assert read["eta_seconds"] is None
    assert read["waiting_for_worker"] is True


def test_another_tenant_learns_nothing_of_a_queued_job(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        owner, other = api_keys(settings, "owner", "other")
        job = client.post("/v1/jobs", data={"prompt": "Mine."},
                          headers={"Authorization": f"Bearer {owner}"},
                          files={"image": ("a.png", png_bytes(32, 32), "image/png")}).json()
        theirs = client.get(f"/v1/jobs/{job['id']}", params={"wait": "1"},
                            headers={"Authorization": f"Bearer {other}"})
        listed = client.get("/v1/jobs", headers={"Authorization": f"Bearer {other}"}).json()
    assert theirs.status_code == 404
    assert "waiting_for_worker" not in theirs.text and "queue_position" not in theirs.text
    assert listed["data"] == []
