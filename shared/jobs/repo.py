"""Repository functions for jobs: SQL only, no decisions (those are in lifecycle.py).

Every function flushes and leaves the commit to its caller, so one transaction can hold
several steps (a terminal UPDATE and its webhook delivery row, say). Every status change
is a guarded UPDATE: it names the statuses it may leave, and a worker's change also names
the attempt it claimed (fencing), so a stale or duplicate actor changes nothing.
Where work comes in many rows (claims, results, expiry, reaping) one statement serves them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, and_, func, or_, select, update
from sqlalchemy.orm import Session

from shared.cursor import newest_first_page
from shared.jobs.status import ALLOWED_FROM, TERMINAL, JobStatus
from shared.models import Job
from shared.timeutil import utcnow
from shared.webhooks import repo as deliveries_repo

# What a terminal UPDATE returns so the same transaction can add the webhook delivery.
_WEBHOOK_COLUMNS = (Job.id, Job.webhook_url, Job.webhook_events)


def insert_job(session: Session, job: Job) -> None:
    session.add(job)
    session.flush()


def get_job(session: Session, job_id: uuid.UUID, tenant_id: str | None = None) -> Job | None:
    """The job; given `tenant_id`, only if it belongs to that tenant (others' are None)."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or (tenant_id is not None and job.tenant_id != tenant_id):
        return None
    return job


def find_by_idempotency_key(session: Session, tenant_id: str, key: str) -> Job | None:
    return session.scalars(
        select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key)
    ).one_or_none()


def count_active(session: Session, tenant_id: str) -> int:
    """Queued and running jobs of a tenant (the quota's measure; a partial index serves it).

    Batch lines are left out: a batch is bounded by VLMQ_BATCH_MAX_LINES, and counting its
    thousands of queued lines would lock the tenant's interactive submissions out.
    """
    return session.scalar(
        select(func.count()).select_from(Job).where(
            Job.tenant_id == tenant_id,
            Job.status.in_((JobStatus.queued, JobStatus.running)),
            Job.batch_id.is_(None),
        )
    ) or 0


def add_deliveries(session: Session, target: JobStatus, rows: Iterable[Row[Any]]) -> None:
    """Webhook delivery rows for jobs that just reached the terminal `target`."""
    if target not in TERMINAL:
        return
    for row in rows:
        if row.webhook_url:
            deliveries_repo.add_for_terminal_job(
                session, row.id, target, row.webhook_url, row.webhook_events
            )


def transition(
    session: Session,
    job_id: uuid.UUID,
    target: JobStatus,
    *,
    attempt: int | None = None,
    **values: Any,
) -> bool:
    """Moves one job to `target` if its status allows it (and, given `attempt`, only while
    that attempt is the job's current one); False when another actor won."""
    conditions = [Job.id == job_id, Job.status.in_(ALLOWED_FROM[target])]
    if attempt is not None:
        conditions.append(Job.attempts == attempt)
    stmt = (
        update(Job)
        .where(*conditions)
        .values(status=target, **values)
        .returning(*_WEBHOOK_COLUMNS)
        .execution_options(synchronize_session=False)
    )
    rows = session.execute(stmt).all()
    add_deliveries(session, target, rows)
    return bool(rows)


# -- claims -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimedJob:
    id: uuid.UUID
    attempt: int  # the value of `attempts` this claim set: the fencing token
    prompt: str
    params: dict[str, Any]
    priority: int
    # An uploaded image (key and the hash it must match) or a reference to fetch.
    image_key: str | None
    image_sha256: str | None
    image_url: str | None
    created_at: datetime
    engine_failures: int


def claim_batch(
    session: Session, model: str, limit: int, lease_seconds: float
) -> list[ClaimedJob]:
    """queued -> running for up to `limit` runnable jobs of `model`, in priority order.

    One statement. SKIP LOCKED lets workers of the same model claim side by side without
    waiting on each other; a job past its deadline is left for the sweeper to expire.
    """
    now = utcnow()
    runnable = (
        select(Job.id)
        .where(
            Job.model == model,
            Job.status == JobStatus.queued,
            or_(Job.runnable_at.is_(None), Job.runnable_at <= now),
            or_(Job.expires_at.is_(None), Job.expires_at > now),
        )
        .order_by(Job.priority, Job.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        # Materialized, so the LIMIT and the row locks apply once; as a plain IN-subquery
        # Postgres may run it again per row and claim far more than `limit`.
        .cte("runnable")
        .prefix_with("MATERIALIZED")
    )
    stmt = (
        update(Job)
        .where(Job.id.in_(select(runnable.c.id)), Job.status == JobStatus.queued)
        .values(
            status=JobStatus.running,
            attempts=Job.attempts + 1,
            started_at=now,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
        )
        .returning(
            Job.id, Job.attempts, Job.prompt, Job.params, Job.priority, Job.image_key,
            Job.image_sha256, Job.image_url, Job.created_at, Job.engine_failures,
        )
        .execution_options(synchronize_session=False)
    )
    rows = session.execute(stmt).all()
    claimed = [ClaimedJob(*row) for row in rows]
    claimed.sort(key=lambda job: (job.priority, job.created_at))
    return claimed


def renew_leases(session: Session, claims: Sequence[tuple[uuid.UUID, int]],
                 lease_seconds: float) -> None:
    """Extends the leases of the (job id, attempt) pairs this worker still runs."""
    if not claims:
        return
    session.execute(
        update(Job)
        .where(
            Job.status == JobStatus.running,
            or_(*(and_(Job.id == job_id, Job.attempts == attempt) for job_id, attempt in claims)),
        )
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )


def not_running(session: Session, job_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Of these jobs, those no longer running (cancelled, or reaped and taken elsewhere)."""
    if not job_ids:
        return []
    running = set(session.scalars(
        select(Job.id).where(Job.id.in_(job_ids), Job.status == JobStatus.running)
    ))
    return [job_id for job_id in job_ids if job_id not in running]


# -- listing and reading --------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    next_cursor: str | None


def list_jobs(
    session: Session,
    *,
    status: JobStatus | None = None,
    model: str | None = None,
    tenant_id: str | None = None,
    batch_id: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """Newest first; the cursor is the (created_at, id) of the last row returned."""
    stmt = select(Job)
    if tenant_id is not None:
        stmt = stmt.where(Job.tenant_id == tenant_id)
    if batch_id is not None:
        stmt = stmt.where(Job.batch_id == batch_id)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    if model is not None:
        stmt = stmt.where(Job.model == model)
    rows, next_cursor = newest_first_page(session, stmt, Job, limit, cursor)
    return Page(jobs=rows, next_cursor=next_cursor)


@dataclass(frozen=True)
class QueueEstimate:
    position: int  # jobs of the same model that run before this one
    eta_seconds: float | None  # None until the model has finished jobs recently


def queue_estimate(session: Session, job: Job, window_seconds: float = 300) -> QueueEstimate:
    """Where a queued job stands, from the queue ahead of it and the model's recent throughput."""
    ahead = session.scalar(
        select(func.count()).where(
            Job.model == job.model,
            Job.status == JobStatus.queued,
            or_(
                Job.priority < job.priority,
                and_(Job.priority == job.priority, Job.created_at < job.created_at),
            ),
        )
    ) or 0
    since = utcnow() - timedelta(seconds=window_seconds)
    done = session.scalar(
        select(func.count()).where(
            Job.model == job.model, Job.status == JobStatus.succeeded, Job.finished_at >= since
        )
    ) or 0
    eta = (ahead + 1) / (done / window_seconds) if done else None
    return QueueEstimate(position=int(ahead), eta_seconds=eta)


# -- sweeps (many rows, one statement each) ---------------------------------------------


def expire_overdue(session: Session, now: datetime, message: str, limit: int = 1000) -> int:
    """queued -> expired for every job past its deadline."""
    overdue = (
        select(Job.id)
        .where(Job.status == JobStatus.queued, Job.expires_at < now)
        .limit(limit)
        .scalar_subquery()
    )
    rows = session.execute(
        update(Job)
        .where(Job.id.in_(overdue), Job.status == JobStatus.queued)
        .values(status=JobStatus.expired, finished_at=now, error_code="expired",
                error_message=message)
        .returning(*_WEBHOOK_COLUMNS)
        .execution_options(synchronize_session=False)
    ).all()
    add_deliveries(session, JobStatus.expired, rows)
    return len(rows)


@dataclass(frozen=True)
class Lapsed:
    id: uuid.UUID
    attempt: int


def lapsed_leases(session: Session, now: datetime, limit: int = 1000) -> list[Lapsed]:
    """Running jobs whose worker stopped renewing their lease (killed, hung, cut off)."""
    rows = session.execute(
        select(Job.id, Job.attempts)
        .where(Job.status == JobStatus.running, Job.lease_expires_at < now)
        .limit(limit)
    ).all()
    return [Lapsed(*row) for row in rows]
