"""The removal writes (shared/retention/removal.py) on Postgres: what a stripped job keeps
and loses, its webhook deliveries and their attempts going with it, jobs that have not
ended left whole, a batch stripped, and tombstones deleted once old enough."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from shared.jobs.images import image_key
from shared.jobs.status import JobStatus
from shared.models import Batch, Job, Tenant, WebhookAttempt, WebhookDelivery
from shared.retention import removal
from shared.retention.policy import retention
from shared.retention.sweeper import RetentionSweeper
from shared.settings import RetentionSettings
from shared.storage import LocalStore
from shared.timeutil import utcnow
from shared.webhooks.events import DeliveryStatus


def _job(session: Session, status: JobStatus, job_id: uuid.UUID | None = None,
         **columns: object) -> uuid.UUID:
    job_id = job_id or uuid.uuid4()
    now = utcnow()
    ended = status not in (JobStatus.queued, JobStatus.running)
    values: dict[str, object] = dict(
        id=job_id, tenant_id="t", model="m", prompt="secret prompt", params={"max_tokens": 8},
        status=status, attempts=1, created_at=now, image_key=f"images/{job_id}",
        image_sha256="0" * 64, image_bytes=10, image_format="PNG", image_width=4,
        image_height=4, idempotency_key=f"key-{job_id}", custom_id="line-1",
        webhook_url="https://hooks.example.com/x", result_text="secret result" if ended else None,
        error_code="engine_error" if status == JobStatus.failed else None,
        error_message="quoting the input" if status == JobStatus.failed else None,
        prompt_tokens=12, completion_tokens=3, finished_at=now if ended else None)
    session.execute(insert(Job).values(**{**values, **columns}))
    delivery = uuid.uuid4()
    session.execute(insert(WebhookDelivery).values(
        id=delivery, job_id=job_id, event="job.succeeded", url="https://hooks.example.com/x",
        message_id=f"msg_{delivery.hex}", payload="{}", status=DeliveryStatus.succeeded,
        attempts=1, round_attempts=1, created_at=now))
    session.execute(insert(WebhookAttempt).values(
        id=uuid.uuid4(), delivery_id=delivery, number=1, started_at=now))
    return job_id


def make_engine_of(sessions: sessionmaker[Session]) -> Engine:
    bind = sessions.kw["bind"]
    assert isinstance(bind, Engine)
    return bind


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


def test_the_image_sweep_drops_every_upload_of_a_job_whatever_comes_first(
    pg_sessions: sessionmaker[Session], tmp_path: Path,
) -> None:
    """A job that does not keep its images loses each upload when it ends: a reference
    first and uploads after, uploads only, references only (nothing to remove, marked once
    all the same); a job that keeps its images and one still running keep theirs."""
    store = LocalStore(tmp_path)

    def upload(job_id: uuid.UUID, index: int) -> dict[str, object]:
        key = image_key(job_id, index)
        store.put(key, b"png", "image/png")
        return {"key": key, "url": None, "sha256": "0" * 64, "bytes": 3, "format": "PNG",
                "width": 4, "height": 4}

    def reference(url: str) -> dict[str, object]:
        return {"key": None, "url": url, "sha256": None, "bytes": None, "format": None,
                "width": None, "height": None}

    def job(session: Session, name: str, status: JobStatus, *, keep: bool, first_upload: bool,
            extra: list[str]) -> uuid.UUID:
        job_id = uuid.uuid4()
        images = [upload(job_id, n + 1) if kind == "upload" else reference(kind)
                  for n, kind in enumerate(extra)]
        columns: dict[str, object] = {"image_url": f"https://images.example.com/{name}.png"}
        if first_upload:
            store.put(image_key(job_id), b"png", "image/png")
        _job(session, status, keep_image=keep, extra_images=images or None,
             **({} if first_upload else {"image_key": None, **columns}), job_id=job_id)
        return job_id

    with pg_sessions.begin() as session:
        session.add(Tenant(id="t"))
        session.flush()
        ref_first = job(session, "a", JobStatus.succeeded, keep=False, first_upload=False,
                        extra=["upload", "upload"])
        uploads = job(session, "b", JobStatus.failed, keep=False, first_upload=True,
                      extra=["https://images.example.com/x.png", "upload"])
        refs_only = job(session, "c", JobStatus.succeeded, keep=False, first_upload=False,
                        extra=["https://images.example.com/y.png"])
        kept = job(session, "d", JobStatus.succeeded, keep=True, first_upload=True,
                   extra=["upload"])
        running = job(session, "e", JobStatus.running, keep=False, first_upload=True,
                      extra=["upload"])

    sweeper = RetentionSweeper(make_engine_of(pg_sessions), pg_sessions, store,
                               RetentionSettings(retention_seconds=0))
    assert sweeper.sweep().images == 4  # two uploads each of ref_first and uploads
    assert sweeper.sweep().images == 0  # each row marked: found no more
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert left == sorted([image_key(kept), image_key(kept, 1), image_key(running),
                           image_key(running, 1)])
    with pg_sessions() as session:
        for job_id in (ref_first, uploads, refs_only):
            row = session.get(Job, job_id)
            assert row is not None and row.images_dropped and row.image_key is None
            assert all(e["key"] is None for e in row.extra_images or ())
            assert len(row.extra_images or ()) in (1, 2)  # the descriptions stay
        ref_row = session.get(Job, ref_first)
        assert ref_row is not None and ref_row.image_url == "https://images.example.com/a.png"
        for job_id in (kept, running):
            row = session.get(Job, job_id)
            assert row is not None and not row.images_dropped
            assert row.image_key == image_key(job_id)
