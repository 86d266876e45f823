"""The job lifecycle in one place: what each outcome does to a job, the retry policy, and
fencing. The transitions module runs the guarded moves; this module decides which runs.

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

from sqlalchemy.orm import Session

from shared.errors import Conflict, NotFound
from shared.jobs import repo, transitions
from shared.jobs.status import JobStatus
from shared.models import Job
from shared.settings import LifecycleSettings
from shared.timeutil import utcnow

EXPIRED_MESSAGE = "the job was not started before its max_queue_seconds ran out"
LEASE_LAPSED_MESSAGE = "the worker running this job stopped renewing its lease"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    backoff_seconds: float
    backoff_max_seconds: float

    @classmethod
    def from_settings(cls, lifecycle: LifecycleSettings) -> RetryPolicy:
        return cls(lifecycle.max_attempts, lifecycle.retry_backoff_seconds,
                   lifecycle.retry_backoff_max_seconds)

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
    # Of prompt_tokens, those standing for the image, where the engine tells them apart.
    image_tokens: int | None = None
    # The attempt's share of the wall time of the engine steps it was in.
    engine_seconds: float = 0.0


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
    stored = set(transitions.succeed_many(session, wins))
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
        moved = transitions.retry(
            session, failure.job_id, failure.attempt,
            runnable_at=now + timedelta(seconds=delay), code=failure.code, message=message,
            refund=failure.refund, suspect=failure.suspect,
        )
        return "retried" if moved else "discarded"
    if failure.transient:
        message = f"{message} (after {failure.attempt} attempts)"
    moved = transitions.fail(session, failure.job_id, failure.attempt, code=failure.code,
                             message=message, now=now)
    return "failed" if moved else "discarded"


def cancel(
    session: Session, job_id: uuid.UUID, tenant_id: str | None = None
) -> tuple[Job, JobStatus]:
    """Cancels a queued or running job; returns it and the status it was cancelled from.
    Given `tenant_id`, another tenant's job is not found."""
    job = repo.get_job(session, job_id, tenant_id)
    if job is None:
        raise NotFound(f"no job with id {job_id}")
    previous = job.status
    moved = transitions.cancel(session, job_id, code="cancelled",
                               message="cancelled by the client", now=utcnow())
    job = repo.get_job(session, job_id)
    if not moved or job is None:
        status = job.status if job else "gone"
        raise Conflict(f"job {job_id} is already {status}; only queued or running jobs can be "
                       "cancelled", code="job_finished")
    return job, previous


def expire_overdue(session: Session) -> int:
    return transitions.expire_overdue(session, utcnow(), EXPIRED_MESSAGE)


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
