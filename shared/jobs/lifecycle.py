"""The job lifecycle in one place: what each outcome does to a job, the retry policy, and
fencing. The repository runs the SQL; this module decides which SQL runs.

A worker's claim sets `attempts` to a new value, and that value is the claim's fencing
token: every later change the worker makes names it, so a worker whose lease was reaped
(and whose job was claimed again elsewhere) cannot finish or requeue the newer attempt.
Functions here flush through the repository; the caller commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.errors import Conflict, NotFound
from shared.jobs import repo
from shared.jobs.status import ALLOWED_FROM, JobStatus
from shared.models import Job
from shared.settings import Settings
from shared.timeutil import utcnow

EXPIRED_MESSAGE = "the job was not started before its max_queue_seconds ran out"
LEASE_LAPSED_MESSAGE = "the worker running this job stopped renewing its lease"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    backoff_seconds: float
    backoff_max_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.max_attempts, settings.retry_backoff_seconds,
                   settings.retry_backoff_max_seconds)

    def delay_after(self, attempt: int) -> float | None:
        """Seconds before the next attempt, or None when `attempt` was the last one."""
        if attempt >= self.max_attempts:
            return None
        return min(self.backoff_seconds * 2 ** (attempt - 1), self.backoff_max_seconds)


@dataclass(frozen=True)
class Result:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@dataclass(frozen=True)
class Succeeded:
    job_id: uuid.UUID
    attempt: int
    result: Result


@dataclass(frozen=True)
class Failed:
    """An attempt that did not produce a result.

    transient: another attempt may succeed (engine, storage, time limit); otherwise the
    job fails at once. refund: the attempt is not counted (the job was only batched with
    an engine failure's culprit, or its worker is shutting down). suspect: the job was in
    the engine when it failed, which counts towards running it alone.
    """

    job_id: uuid.UUID
    attempt: int
    code: str
    message: str
    transient: bool
    refund: bool = False
    suspect: bool = False


Outcome = Succeeded | Failed


@dataclass
class Recorded:
    succeeded: list[uuid.UUID]
    retried: list[uuid.UUID]
    failed: list[uuid.UUID]
    discarded: list[uuid.UUID]  # fenced off: cancelled, reaped or finished meanwhile


def record(session: Session, outcomes: Sequence[Outcome], policy: RetryPolicy) -> Recorded:
    """Writes a batch of attempt outcomes; the caller commits them in one transaction."""
    done = Recorded([], [], [], [])
    wins = [o for o in outcomes if isinstance(o, Succeeded)]
    stored = set(_finish_succeeded(session, wins))
    for outcome in wins:
        (done.succeeded if outcome.job_id in stored else done.discarded).append(outcome.job_id)
    for outcome in outcomes:
        if isinstance(outcome, Failed):
            kind = _record_failure(session, outcome, policy)
            getattr(done, kind).append(outcome.job_id)
    return done


def _record_failure(session: Session, failure: Failed, policy: RetryPolicy) -> str:
    now = utcnow()
    message = failure.message[:2000]
    delay = 0.0 if failure.refund else policy.delay_after(failure.attempt)
    if failure.transient and delay is not None:
        moved = repo.transition(
            session, failure.job_id, JobStatus.queued, attempt=failure.attempt,
            attempts=Job.attempts - 1 if failure.refund else Job.attempts,
            engine_failures=Job.engine_failures + (1 if failure.suspect else 0),
            runnable_at=now + timedelta(seconds=delay), lease_expires_at=None,
            error_code=failure.code, error_message=message,
        )
        return "retried" if moved else "discarded"
    if failure.transient:
        message = f"{message} (after {failure.attempt} attempts)"
    moved = repo.transition(
        session, failure.job_id, JobStatus.failed, attempt=failure.attempt,
        finished_at=now, error_code=failure.code, error_message=message, lease_expires_at=None,
    )
    return "failed" if moved else "discarded"


_SUCCEED_MANY = text("""
UPDATE jobs SET status = 'succeeded', finished_at = :now, lease_expires_at = NULL,
       -- an earlier attempt's transient error no longer applies
       error_code = NULL, error_message = NULL, result_text = r.text,
       prompt_tokens = r.prompt_tokens, completion_tokens = r.completion_tokens,
       finish_reason = r.finish_reason
FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS integer[]), CAST(:texts AS text[]),
            CAST(:prompt_tokens AS integer[]), CAST(:completion_tokens AS integer[]),
            CAST(:finish_reasons AS text[]))
     AS r(id, attempt, text, prompt_tokens, completion_tokens, finish_reason)
WHERE jobs.id = r.id AND jobs.attempts = r.attempt AND jobs.status = 'running'
RETURNING jobs.id, jobs.webhook_url, jobs.webhook_events
""")


def _finish_succeeded(session: Session, wins: Sequence[Succeeded]) -> list[uuid.UUID]:
    """running -> succeeded for many jobs in one UPDATE (Postgres); one each elsewhere."""
    if not wins:
        return []
    now = utcnow()
    if session.get_bind().dialect.name != "postgresql":
        return [
            w.job_id for w in wins
            if repo.transition(
                session, w.job_id, JobStatus.succeeded, attempt=w.attempt, finished_at=now,
                lease_expires_at=None, error_code=None, error_message=None,
                result_text=w.result.text, prompt_tokens=w.result.prompt_tokens,
                completion_tokens=w.result.completion_tokens,
                finish_reason=w.result.finish_reason,
            )
        ]
    # Arrays through unnest keep the SQL text fixed whatever the batch size, so it is
    # prepared once instead of compiled per batch.
    returned = session.execute(_SUCCEED_MANY, {
        "now": now,
        "ids": [w.job_id for w in wins],
        "attempts": [w.attempt for w in wins],
        "texts": [w.result.text for w in wins],
        "prompt_tokens": [w.result.prompt_tokens for w in wins],
        "completion_tokens": [w.result.completion_tokens for w in wins],
        "finish_reasons": [w.result.finish_reason for w in wins],
    }).all()
    repo.add_deliveries(session, JobStatus.succeeded, returned)
    return [row.id for row in returned]


def cancel(
    session: Session, job_id: uuid.UUID, tenant_id: str | None = None
) -> tuple[Job, JobStatus]:
    """Cancels a queued or running job; returns it and the status it was cancelled from.
    Given `tenant_id`, another tenant's job is not found."""
    job = repo.get_job(session, job_id, tenant_id)
    if job is None:
        raise NotFound(f"no job with id {job_id}")
    previous = job.status
    moved = previous in ALLOWED_FROM[JobStatus.cancelled] and repo.transition(
        session, job_id, JobStatus.cancelled, finished_at=utcnow(), error_code="cancelled",
        error_message="cancelled by the client", lease_expires_at=None,
    )
    job = repo.get_job(session, job_id)
    if not moved or job is None:
        status = job.status if job else "gone"
        raise Conflict(f"job {job_id} is already {status}; only queued or running jobs can be "
                       "cancelled", code="job_finished")
    return job, previous


def expire_overdue(session: Session) -> int:
    return repo.expire_overdue(session, utcnow(), EXPIRED_MESSAGE)


def reap_lapsed(session: Session, policy: RetryPolicy) -> int:
    """Running jobs whose lease lapsed go back to the queue, or fail once out of attempts.

    Each change is fenced by the attempt that was read, so a worker that renews its lease
    or finishes the job in the meantime wins and the reaper changes nothing.
    """
    reaped = 0
    for lapsed in repo.lapsed_leases(session, utcnow()):
        reaped += _record_failure(session, Failed(
            lapsed.id, lapsed.attempt, "worker_lost", LEASE_LAPSED_MESSAGE, transient=True,
        ), policy) != "discarded"
    return reaped
