"""Repository functions for jobs: SQL only, no decisions (those are in lifecycle.py).

Every function flushes and leaves the commit to its caller. Status changes are not here:
each is a named, guarded verb in shared/jobs/transitions.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from shared import workers_repo
from shared.cursor import newest_first_page
from shared.jobs.status import JobStatus
from shared.models import Job
from shared.timeutil import utcnow


def insert_job(session: Session, job: Job) -> None:
    """Inserts a job row as given: tests seed rows in any state with it."""
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
    """Newest first; the cursor is the (created_at, id) of the last row returned. Jobs
    whose data was removed are left out: they are gone for whoever lists."""
    stmt = select(Job).where(Job.purged_at.is_(None))
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
    # While no worker serves the model: the model's last cold start (None if never
    # measured), the least wait for one to start. Else from recent throughput (None until
    # it has finished jobs recently).
    eta_seconds: float | None
    # No live worker serves the model: the job waits for one to start (or finish loading),
    # and past throughput says nothing of when that will be.
    waiting_for_worker: bool


def queue_estimate(session: Session, job: Job, worker_ttl_seconds: float,
                   window_seconds: float = 300) -> QueueEstimate:
    """Where a queued job stands, from the queue ahead of it and the model's recent throughput."""
    ahead_count = select(func.count()).where(
        Job.model == job.model,
        Job.status == JobStatus.queued,
        or_(
            Job.priority < job.priority,
            and_(Job.priority == job.priority, Job.created_at < job.created_at),
        ),
    ).scalar_subquery()
    # The place in line and whether anyone serves the model, in one round trip: this runs
    # at the end of every long poll on a queued job.
    ahead, live, cold_start = session.execute(
        select(ahead_count, workers_repo.live_worker_exists(job.model, worker_ttl_seconds),
               workers_repo.cold_start_seconds(job.model))
    ).one()
    ahead = ahead or 0
    if not live:
        return QueueEstimate(position=int(ahead), eta_seconds=cold_start,
                             waiting_for_worker=True)
    since = utcnow() - timedelta(seconds=window_seconds)
    done = session.scalar(
        select(func.count()).where(
            Job.model == job.model, Job.status == JobStatus.succeeded, Job.finished_at >= since
        )
    ) or 0
    eta = (ahead + 1) / (done / window_seconds) if done else None
    return QueueEstimate(position=int(ahead), eta_seconds=eta, waiting_for_worker=False)


@dataclass(frozen=True)
class Backlog:
    queued: int
    running: int
    oldest_queued_at: datetime | None


@dataclass(frozen=True)
class ClassBacklog:
    """One model's jobs at one priority (0 runs first) now."""

    model: str
    priority: int
    queued: int
    running: int
    oldest_queued_at: datetime | None
    # Queued past their deadline (expires_at): the sweeper expires these at its next pass,
    # so a count that lasts says expiry is not running.
    overdue: int


def backlogs_by_priority(session: Session, now: datetime) -> list[ClassBacklog]:
    """Every model's queued and running jobs (batch lines too), by priority, in one grouped
    statement; models with neither are absent."""
    queued = Job.status == JobStatus.queued
    rows = session.execute(
        select(Job.model, Job.priority,
               func.count().filter(queued),
               func.count().filter(Job.status == JobStatus.running),
               func.min(Job.created_at).filter(queued),
               func.count().filter(queued, Job.expires_at < now))
        .where(Job.status.in_((JobStatus.queued, JobStatus.running)))
        .group_by(Job.model, Job.priority)
        .order_by(Job.model, Job.priority)
    ).all()
    return [ClassBacklog(model, int(priority), int(q), int(r), oldest, int(overdue))
            for model, priority, q, r, oldest, overdue in rows]


def backlogs(session: Session, models: Sequence[str]) -> dict[str, Backlog]:
    """Per model in `models`, its jobs waiting and running now, all priorities together."""
    totals = {model: Backlog(0, 0, None) for model in models}
    for c in backlogs_by_priority(session, utcnow()) if models else ():
        if (was := totals.get(c.model)) is None:
            continue
        oldest = min((t for t in (was.oldest_queued_at, c.oldest_queued_at) if t is not None),
                     default=None)
        totals[c.model] = Backlog(was.queued + c.queued, was.running + c.running, oldest)
    return totals


def succeeded_since(session: Session, since: datetime) -> dict[str, int]:
    """Per model, the jobs that succeeded since `since` (models with none are absent): recent
    throughput, measured as queue_estimate measures it."""
    rows = session.execute(
        select(Job.model, func.count())
        .where(Job.status == JobStatus.succeeded, Job.finished_at >= since)
        .group_by(Job.model)
    ).all()
    return {model: int(n) for model, n in rows}


# -- sweeps (many rows, one statement each) ---------------------------------------------


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
