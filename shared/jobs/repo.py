"""Repository functions for jobs. Every status change is one guarded UPDATE."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from shared.cursor import newest_first_page
from shared.errors import Conflict, NotFound
from shared.jobs.status import ALLOWED_FROM, TERMINAL, JobStatus
from shared.models import Job
from shared.timeutil import as_utc, utcnow
from shared.webhooks import repo as deliveries_repo


def insert_job(session: Session, job: Job) -> Job:
    session.add(job)
    session.commit()
    return job


def get_job(session: Session, job_id: uuid.UUID) -> Job | None:
    return session.get(Job, job_id, populate_existing=True)


def transition(session: Session, job_id: uuid.UUID, target: JobStatus, **values: Any) -> bool:
    """Move a job to `target` if its current status allows it; False when another actor won.

    A job that ends with a webhook gets its delivery row in the same transaction, so no
    terminal event can be lost between the two writes.
    """
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status.in_(ALLOWED_FROM[target]))
        .values(status=target, **values)
        .returning(Job.webhook_url, Job.webhook_events)
        .execution_options(synchronize_session=False)
    )
    row = session.execute(stmt).first()
    if row is not None and target in TERMINAL and row.webhook_url:
        deliveries_repo.add_for_terminal_job(
            session, job_id, target, row.webhook_url, row.webhook_events
        )
    session.commit()
    return row is not None


def mark_running(session: Session, job_id: uuid.UUID, lease_seconds: float = 30) -> bool:
    now = utcnow()
    return transition(
        session,
        job_id,
        JobStatus.running,
        started_at=now,
        attempts=Job.attempts + 1,
        lease_expires_at=now + timedelta(seconds=lease_seconds),
    )


@dataclass(frozen=True)
class JobOutcome:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def mark_succeeded(session: Session, job_id: uuid.UUID, outcome: JobOutcome) -> bool:
    return transition(
        session,
        job_id,
        JobStatus.succeeded,
        finished_at=utcnow(),
        result_text=outcome.text,
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        finish_reason=outcome.finish_reason,
        lease_expires_at=None,
        error_code=None,  # an earlier attempt's transient error no longer applies
        error_message=None,
    )


def mark_failed(session: Session, job_id: uuid.UUID, code: str, message: str) -> bool:
    return transition(
        session,
        job_id,
        JobStatus.failed,
        finished_at=utcnow(),
        error_code=code,
        error_message=message[:2000],
        lease_expires_at=None,
    )


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    next_cursor: str | None


def list_jobs(
    session: Session,
    *,
    status: JobStatus | None = None,
    model: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """Newest first; the cursor is the (created_at, id) of the last row returned."""
    stmt = select(Job)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    if model is not None:
        stmt = stmt.where(Job.model == model)
    rows, next_cursor = newest_first_page(session, stmt, Job, limit, cursor)
    return Page(jobs=rows, next_cursor=next_cursor)


def delete_job(session: Session, job_id: uuid.UUID) -> None:
    """Only for undoing a submission that could not be enqueued."""
    job = session.get(Job, job_id)
    if job is not None:
        session.delete(job)
        session.commit()


def find_by_idempotency_key(session: Session, key: str) -> Job | None:
    return session.scalars(select(Job).where(Job.idempotency_key == key)).one_or_none()


def is_past_deadline(job: Job) -> bool:
    return job.expires_at is not None and as_utc(job.expires_at) <= utcnow()


def expire(session: Session, job_id: uuid.UUID) -> bool:
    return transition(
        session,
        job_id,
        JobStatus.expired,
        finished_at=utcnow(),
        error_code="expired",
        error_message="the job was not started before its max_queue_seconds ran out",
    )


def claim(session: Session, job_id: uuid.UUID, lease_seconds: float = 30) -> Job | None:
    """queued -> running for the caller, or None: gone, taken, finished, or expired (now)."""
    job = get_job(session, job_id)
    if job is None or job.status != JobStatus.queued:
        return None
    if is_past_deadline(job):
        expire(session, job_id)
        return None
    if not mark_running(session, job_id, lease_seconds):
        return None
    return job


def refresh_deadline(session: Session, job: Job) -> Job:
    """Reads expire lazily: a queued job past its deadline shows (and becomes) expired."""
    if job.status == JobStatus.queued and is_past_deadline(job):
        expire(session, job.id)
        return get_job(session, job.id) or job
    return job


def cancel(session: Session, job_id: uuid.UUID) -> tuple[Job, JobStatus]:
    """Cancels a queued or running job; returns it and the status it was cancelled from."""
    job = get_job(session, job_id)
    if job is None:
        raise NotFound(f"no job with id {job_id}")
    previous = job.status
    moved = previous in ALLOWED_FROM[JobStatus.cancelled] and transition(
        session,
        job_id,
        JobStatus.cancelled,
        finished_at=utcnow(),
        error_code="cancelled",
        error_message="cancelled by the client",
    )
    job = get_job(session, job_id)
    if not moved or job is None:
        status = job.status if job else "gone"
        raise Conflict(f"job {job_id} is already {status}; only queued or running jobs can be "
                       "cancelled", code="job_finished")
    return job, previous


def requeue(
    session: Session, job_id: uuid.UUID, code: str, message: str, delay_seconds: float = 0
) -> bool:
    """running -> queued for another attempt; the error stays visible until one succeeds."""
    return transition(
        session,
        job_id,
        JobStatus.queued,
        lease_expires_at=None,
        enqueued_at=utcnow() + timedelta(seconds=delay_seconds),
        error_code=code,
        error_message=message[:2000],
    )


def extend_leases(session: Session, job_ids: list[uuid.UUID], lease_seconds: float) -> None:
    if not job_ids:
        return
    session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.status == JobStatus.running)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    session.commit()


@dataclass(frozen=True)
class Lapsed:
    id: uuid.UUID
    model: str
    priority: int
    attempts: int


def lapsed_leases(session: Session, model: str, limit: int = 500) -> list[Lapsed]:
    """Running jobs of `model` whose worker stopped renewing their lease (killed, hung)."""
    rows = session.execute(
        select(Job.id, Job.model, Job.priority, Job.attempts)
        .where(
            Job.status == JobStatus.running,
            Job.model == model,
            Job.lease_expires_at < utcnow(),
        )
        .limit(limit)
    ).all()
    return [Lapsed(*row) for row in rows]


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


def mark_enqueued(session: Session, job_id: uuid.UUID) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(enqueued_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()


def take_unsent(session: Session, model: str, older_than_seconds: float,
                limit: int = 500) -> list[Lapsed]:
    """Queued jobs of `model` whose message should have been delivered long ago.

    Each is stamped as sent again in the same guarded UPDATE, so when several workers look
    at once exactly one of them re-sends a given job.
    """
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    stale = session.execute(
        select(Job.id, Job.model, Job.priority, Job.attempts, Job.enqueued_at)
        .where(Job.model == model, Job.status == JobStatus.queued, Job.enqueued_at < cutoff)
        .limit(limit)
    ).all()
    taken: list[Lapsed] = []
    for job_id, job_model, priority, attempts, sent_at in stale:
        stmt = (
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued, Job.enqueued_at == sent_at)
            .values(enqueued_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if session.execute(stmt).rowcount == 1:
            taken.append(Lapsed(job_id, job_model, priority, attempts))
    session.commit()
    return taken


def cancelled_among(session: Session, job_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    if not job_ids:
        return []
    return list(session.scalars(
        select(Job.id).where(Job.id.in_(job_ids), Job.status == JobStatus.cancelled)
    ))


def expire_overdue(session: Session, limit: int = 500) -> int:
    """Expires queued jobs with a webhook that are past their deadline.

    Other jobs expire lazily when read or claimed; these owe their endpoint a
    job.expired event even when nobody reads them and no worker serves their model.
    """
    overdue = session.scalars(
        select(Job.id)
        .where(
            Job.status == JobStatus.queued,
            Job.expires_at < utcnow(),
            Job.webhook_url.is_not(None),
        )
        .limit(limit)
    ).all()
    return sum(expire(session, job_id) for job_id in overdue)
