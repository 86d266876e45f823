"""The removal writes (shared/retention/removal.py) on Postgres: what a stripped job keeps
and loses, its webhook deliveries and their attempts going with it, jobs that have not
ended left whole, a batch stripped, and tombstones deleted once old enough."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from shared.jobs.status import JobStatus
from shared.models import Batch, Job, Tenant, WebhookAttempt, WebhookDelivery
from shared.retention import removal
from shared.retention.policy import retention
from shared.timeutil import utcnow
from shared.webhooks.events import DeliveryStatus


def _job(session: Session, status: JobStatus, **columns: object) -> uuid.UUID:
    job_id = uuid.uuid4()
    now = utcnow()
    ended = status not in (JobStatus.queued, JobStatus.running)
    session.execute(insert(Job).values(
        id=job_id, tenant_id="t", model="m", prompt="secret prompt", params={"max_tokens": 8},
        status=status, attempts=1, created_at=now, image_key=f"images/{job_id}",
        image_sha256="0" * 64, image_bytes=10, image_format="PNG", image_width=4,
        image_height=4, idempotency_key=f"key-{job_id}", custom_id="line-1",
        webhook_url="https://hooks.example.com/x", result_text="secret result" if ended else None,
        error_code="engine_error" if status == JobStatus.failed else None,
        error_message="quoting the input" if status == JobStatus.failed else None,
        prompt_tokens=12, completion_tokens=3, finished_at=now if ended else None, **columns))
    delivery = uuid.uuid4()
    session.execute(insert(WebhookDelivery).values(
        id=delivery, job_id=job_id, event="job.succeeded", url="https://hooks.example.com/x",
        message_id=f"msg_{delivery.hex}", payload="{}", status=DeliveryStatus.succeeded,
        attempts=1, round_attempts=1, created_at=now))
    session.execute(insert(WebhookAttempt).values(
        id=uuid.uuid4(), delivery_id=delivery, number=1, started_at=now))
    return job_id


def _count(session: Session, table: type, *where: object) -> int:
    return session.scalar(select(func.count()).select_from(table).where(*where)) or 0


def test_a_stripped_job_keeps_its_status_and_times_and_loses_what_the_client_sent(
    pg_sessions: sessionmaker[Session],
) -> None:
    with pg_sessions.begin() as session:
        session.add(Tenant(id="t"))
        session.flush()
        ended = _job(session, JobStatus.succeeded)
        failed = _job(session, JobStatus.failed)
        running = _job(session, JobStatus.running)
        queued = _job(session, JobStatus.queued)

    with pg_sessions.begin() as session:
        stripped = removal.strip_jobs(session, [ended, failed, running, queued], utcnow())
    assert sorted(stripped) == sorted([ended, failed])

    with pg_sessions() as session:
        for job_id in (ended, failed):
            job = session.get(Job, job_id)
            assert job is not None and job.purged_at is not None
            assert (job.prompt, job.params, job.result_text, job.image_key, job.image_sha256,
                    job.idempotency_key, job.custom_id, job.webhook_url, job.error_message) \
                == ("", {}, None, None, None, None, None, None, None)
            assert job.finished_at is not None and job.prompt_tokens == 12
        assert session.get(Job, failed).error_code == "engine_error"  # type: ignore[union-attr]
        assert _count(session, WebhookDelivery, WebhookDelivery.job_id.in_([ended, failed])) == 0
        assert _count(session, WebhookAttempt) == 2  # the two jobs still running or queued
        for job_id in (running, queued):
            job = session.get(Job, job_id)
            assert job is not None and job.purged_at is None
            assert job.prompt == "secret prompt" and job.image_key == f"images/{job_id}"


def test_tombstones_go_only_once_older_than_the_window(
    pg_sessions: sessionmaker[Session],
) -> None:
    now = utcnow()
    with pg_sessions.begin() as session:
        session.add(Tenant(id="t"))
        session.flush()
        old = _job(session, JobStatus.succeeded)
        recent = _job(session, JobStatus.succeeded)
        session.add(Batch(id="batch_old", tenant_id="t", endpoint="/v1/chat/completions",
                          input_file_id="file-x", completion_window="24h", status="completed",
                          priority=7, expires_at=now, completed_at=now,
                          metadata_={"k": "v"}))
        session.flush()
        line = _job(session, JobStatus.succeeded, batch_id="batch_old", batch_line=0)
    with pg_sessions.begin() as session:
        removal.strip_jobs(session, [old, line], now - timedelta(hours=2))
        removal.strip_jobs(session, [recent], now)
        assert removal.strip_batch(session, "batch_old", now - timedelta(hours=2))
        assert not removal.strip_batch(session, "batch_old", now)  # once

    with pg_sessions() as session:
        batch = session.get(Batch, "batch_old")
        assert batch is not None and batch.metadata_ is None and batch.status == "completed"
    with pg_sessions.begin() as session:
        removed = removal.delete_tombstones(session, now - timedelta(hours=1), limit=100)
    assert removed == 3  # the old job, the batch and its line
    with pg_sessions() as session:
        assert session.get(Job, old) is None and session.get(Job, line) is None
        assert session.get(Batch, "batch_old") is None
        assert session.get(Job, recent) is not None


def test_a_tenants_own_retention_wins_and_zero_keeps_for_ever() -> None:
    assert retention(None, 60) == timedelta(seconds=60)
    assert retention(5, 60) == timedelta(seconds=5)
    assert retention(0, 60) is None
    assert retention(None, 0) is None
