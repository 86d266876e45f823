"""Every write of a job's status, one named verb each (procrastinate's and river's way).

Each verb is one guarded statement: its WHERE names the source states that VERBS gives it
(a subset of the table in status.py), and a worker's verb also names the attempt it
claimed (fencing, `attempts = :claimed`), so a stale or duplicate actor changes nothing and
the verb says so (False, or fewer rows). Work that comes in many rows (claims, results,
expiry, a batch's lines) is one statement for all of them. Verbs flush and leave the
commit to their caller, so one transaction can hold a move and its webhook delivery row.
A terminal move counts its jobs in the usage ledger (shared/usage/ledger.py) in the same
statement on Postgres, in the same transaction on SQLite.

Nothing else writes `jobs.status`: tests/unit/test_status_writes.py scans for it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Row, Update, func, or_, select, text, update
from sqlalchemy.orm import Session

from shared.jobs import events
from shared.jobs.status import ALLOWED_FROM, CREATED_AS, TERMINAL, JobStatus
from shared.models import Job
from shared.timeutil import utcnow
from shared.usage import ledger
from shared.webhooks import repo as deliveries_repo

if TYPE_CHECKING:
    from shared.jobs.lifecycle import Succeeded

Q, R = JobStatus.queued, JobStatus.running


@dataclass(frozen=True)
class Move:
    sources: frozenset[JobStatus]
    target: JobStatus


# verb -> the states it may leave and the one it enters.
VERBS: dict[str, Move] = {
    "claim_batch": Move(frozenset({Q}), R),
    "succeed_many": Move(frozenset({R}), JobStatus.succeeded),
    "retry": Move(frozenset({R}), Q),
    "fail": Move(frozenset({Q, R}), JobStatus.failed),
    "cancel": Move(frozenset({Q, R}), JobStatus.cancelled),
    "expire_overdue": Move(frozenset({Q}), JobStatus.expired),
    "cancel_batch_lines": Move(frozenset({Q, R}), JobStatus.cancelled),
    "expire_batch_lines": Move(frozenset({Q, R}), JobStatus.expired),
}
for _verb, _move in VERBS.items():
    assert _move.sources <= ALLOWED_FROM[_move.target], f"{_verb} leaves the table"

# What a terminal UPDATE returns so the same transaction can add the webhook delivery, and
# what its task event shows (shared/jobs/events.py).
_WEBHOOK_COLUMNS = (Job.id, Job.webhook_url, Job.webhook_events)
_SUMMARY_COLUMNS = (Job.model, Job.tenant_id,
                    func.substr(Job.prompt, 1, events.PROMPT_CHARS).label("prompt_head"),
                    Job.image_width, Job.image_height, Job.image_url)
_MOVED_COLUMNS = (*_WEBHOOK_COLUMNS, *_SUMMARY_COLUMNS)


def _from(verb: str) -> ColumnElement[bool]:
    sources = VERBS[verb].sources
    if len(sources) == 1:
        return Job.status == next(iter(sources))
    return Job.status.in_(sorted(sources))


def _add_deliveries(session: Session, target: JobStatus, rows: Iterable[Row[Any]]) -> None:
    """Webhook delivery rows for jobs that just reached the terminal `target`."""
    if target not in TERMINAL:
        return
    for row in rows:
        if row.webhook_url:
            deliveries_repo.add_for_terminal_job(
                session, row.id, target, row.webhook_url, row.webhook_events
            )


def _note_moved(session: Session, kind: str, rows: Iterable[Row[Any]], at: datetime,
                **fields: Any) -> None:
    if not events.enabled():
        return
    events.note_many(session, (
        (kind, str(row.id), at.timestamp(),
         {**events.summary(row.model, row.tenant_id, row.prompt_head, row.image_width,
                           row.image_height, row.image_url), **fields})
        for row in rows
    ))


def _move_one(session: Session, verb: str, job_id: uuid.UUID, attempt: int | None,
              event: tuple[str, dict[str, Any]], **values: Any) -> bool:
    """`event`: the task event of the move, its type and fields."""
    target = VERBS[verb].target
    conditions = [Job.id == job_id, _from(verb)]
    if attempt is not None:
        conditions.append(Job.attempts == attempt)
    rows = _execute_move(
        session,
        update(Job).where(*conditions).values(status=target, **values)
        .returning(*_MOVED_COLUMNS),
        target, values.get("finished_at"), usage=verb == "succeed_many",
    )
    _add_deliveries(session, target, rows)
    _note_moved(session, event[0], rows, utcnow(), **event[1])
    return bool(rows)


def _execute_move(session: Session, move: Update, target: JobStatus, at: datetime | None, *,
                  usage: bool = False) -> list[Row[Any]]:
    """Runs a move's UPDATE ... RETURNING (which names tenant_id and model); a terminal
    move's jobs are counted in the usage ledger as `target` at the hour of `at`, and with
    `usage` their tokens and engine seconds too."""
    if target not in TERMINAL:
        return list(session.execute(move.execution_options(synchronize_session=False)).all())
    assert at is not None
    if usage:
        move = move.returning(*ledger.USAGE_COLUMNS)
    if session.get_bind().dialect.name == "postgresql":
        moved = move.cte("moved")
        counted = ledger.count_moved(moved, target, at, usage=usage).cte("counted")
        return list(session.execute(select(moved).add_cte(counted)).all())
    rows = list(session.execute(move.execution_options(synchronize_session=False)).all())
    tally = ledger.Tally()
    tally.moved(rows, target, at, usage=usage)
    tally.write(session)
    return rows


# -- creation ---------------------------------------------------------------------------


def created(**columns: Any) -> dict[str, Any]:
    """The row of a new job, queued: what intake inserts."""
    row = dict(columns, status=JobStatus.queued)
    assert row["status"] in CREATED_AS
    return row


def created_failed(row: dict[str, Any], code: str, message: str,
                   now: datetime) -> dict[str, Any]:
    """A new job's row made failed before it is inserted: a batch line that cannot run
    (bad parameters, a refused image) still becomes a job, so its output line says why."""
    row.update(status=JobStatus.failed, finished_at=now, error_code=code,
               error_message=message)
    return row


# -- the worker's verbs ----------------------------------------------------------------


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
    tenant_id: str
    image_width: int | None
    image_height: int | None
    # The second and later images, in prompt order (Job.extra_images); None: one image.
    extra_images: list[dict[str, Any]] | None = None


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
            _from("claim_batch"),
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
        .where(Job.id.in_(select(runnable.c.id)), _from("claim_batch"))
        .values(
            status=VERBS["claim_batch"].target,
            attempts=Job.attempts + 1,
            started_at=now,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
        )
        .returning(
            Job.id, Job.attempts, Job.prompt, Job.params, Job.priority, Job.image_key,
            Job.image_sha256, Job.image_url, Job.created_at, Job.engine_failures,
            Job.tenant_id, Job.image_width, Job.image_height, Job.extra_images,
        )
        .execution_options(synchronize_session=False)
    )
    rows = session.execute(stmt).all()
    claimed = [ClaimedJob(*row) for row in rows]
    claimed.sort(key=lambda job: (job.priority, job.created_at))
    _note_claims(session, model, claimed, now)
    return claimed


def _note_claims(session: Session, model: str, claimed: list[ClaimedJob],
                 now: datetime) -> None:
    if not events.enabled():
        return
    at = now.timestamp()
    noted: list[events.TaskEvent] = []
    for job in claimed:
        shown = events.summary(model, job.tenant_id, job.prompt, job.image_width,
                               job.image_height, job.image_url)
        noted.append(("task-received", str(job.id), at, {**shown, "retries": job.attempt - 1}))
        noted.append(("task-started", str(job.id), at, {}))
    events.note_many(session, noted)


def _sql_in(verb: str) -> str:
    sources = sorted(VERBS[verb].sources)
    if len(sources) == 1:
        return f"= '{sources[0]}'"
    return "IN (" + ", ".join(f"'{s}'" for s in sources) + ")"


_SUCCEEDED_RETURNS = ("id", "webhook_url", "webhook_events", "started_at", "tenant_id",
                      "model", *ledger.USAGE)
_SUCCEED_MOVE = text(f"""
UPDATE jobs SET status = '{VERBS["succeed_many"].target}', finished_at = :now,
       lease_expires_at = NULL,
       -- an earlier attempt's transient error no longer applies
       error_code = NULL, error_message = NULL, result_text = r.text,
       prompt_tokens = r.prompt_tokens, completion_tokens = r.completion_tokens,
       finish_reason = r.finish_reason, image_tokens = r.image_tokens,
       engine_seconds = r.engine_seconds
FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS integer[]), CAST(:texts AS text[]),
            CAST(:prompt_tokens AS integer[]), CAST(:completion_tokens AS integer[]),
            CAST(:finish_reasons AS text[]), CAST(:image_tokens AS integer[]),
            CAST(:engine_seconds AS double precision[]))
     AS r(id, attempt, text, prompt_tokens, completion_tokens, finish_reason, image_tokens,
          engine_seconds)
WHERE jobs.id = r.id AND jobs.attempts = r.attempt AND jobs.status {_sql_in("succeed_many")}
RETURNING {", ".join(f"jobs.{name}" for name in _SUCCEEDED_RETURNS)}
""").columns(*(Job.__table__.c[name] for name in _SUCCEEDED_RETURNS)).cte("moved")
# The move and its count in the usage ledger, one statement built once: the hour and the
# shard are parameters (ledger.where).
_SUCCEED_MANY = select(_SUCCEED_MOVE).add_cte(
    ledger.count_moved(_SUCCEED_MOVE, VERBS["succeed_many"].target, None, usage=True)
    .cte("counted"))


def succeed_many(session: Session, wins: Sequence[Succeeded]) -> list[uuid.UUID]:
    """running -> succeeded with the result, for many attempts in one UPDATE (Postgres; one
    each elsewhere), each fenced by its attempt; returns the jobs that moved."""
    if not wins:
        return []
    now = utcnow()
    if session.get_bind().dialect.name != "postgresql":
        return [
            w.job_id for w in wins
            if _move_one(
                session, "succeed_many", w.job_id, w.attempt,
                ("task-succeeded", {"result": events.result_text(w.result.text)}),
                finished_at=now,
                lease_expires_at=None, error_code=None, error_message=None,
                result_text=w.result.text, prompt_tokens=w.result.prompt_tokens,
                completion_tokens=w.result.completion_tokens,
                finish_reason=w.result.finish_reason, image_tokens=w.result.image_tokens,
                engine_seconds=w.result.engine_seconds,
            )
        ]
    # Arrays through unnest keep the SQL text fixed whatever the batch size, so it is
    # prepared once instead of compiled per batch.
    returned = session.execute(_SUCCEED_MANY, {
        **ledger.where(now),
        "now": now,
        "ids": [w.job_id for w in wins],
        "attempts": [w.attempt for w in wins],
        "texts": [w.result.text for w in wins],
        "prompt_tokens": [w.result.prompt_tokens for w in wins],
        "completion_tokens": [w.result.completion_tokens for w in wins],
        "finish_reasons": [w.result.finish_reason for w in wins],
        "image_tokens": [w.result.image_tokens for w in wins],
        "engine_seconds": [w.result.engine_seconds for w in wins],
    }).all()
    _add_deliveries(session, VERBS["succeed_many"].target, returned)
    if events.enabled():
        texts = {w.job_id: w.result.text for w in wins}
        events.note_many(session, (
            ("task-succeeded", str(row.id), now.timestamp(),
             {"runtime": (now - row.started_at).total_seconds() if row.started_at else None,
              "result": events.result_text(texts[row.id])})
            for row in returned
        ))
    return [row.id for row in returned]


def retry(session: Session, job_id: uuid.UUID, attempt: int, *, runnable_at: datetime,
          code: str, message: str, refund: bool = False, suspect: bool = False) -> bool:
    """running -> queued, runnable again at `runnable_at`, fenced by `attempt`. A refunded
    attempt is not counted; a suspect one counts towards running the job alone."""
    return _move_one(
        session, "retry", job_id, attempt,
        ("task-retried", {"exception": events.error_text(code, message)}),
        attempts=Job.attempts - 1 if refund else Job.attempts,
        engine_failures=Job.engine_failures + (1 if suspect else 0),
        runnable_at=runnable_at, lease_expires_at=None, error_code=code, error_message=message,
    )


def fail(session: Session, job_id: uuid.UUID, attempt: int, *, code: str, message: str,
         now: datetime) -> bool:
    """-> failed for good, fenced by `attempt`."""
    return _move_one(session, "fail", job_id, attempt,
                     ("task-failed", {"exception": events.error_text(code, message)}),
                     finished_at=now, error_code=code, error_message=message,
                     lease_expires_at=None)


# -- the client's and the sweeper's verbs ----------------------------------------------


def cancel(session: Session, job_id: uuid.UUID, *, code: str, message: str,
           now: datetime) -> bool:
    """queued or running -> cancelled (a running job's worker drops it on its next check)."""
    return _move_one(session, "cancel", job_id, None,
                     ("task-revoked", {"expired": False, "terminated": False}),
                     finished_at=now, error_code=code, error_message=message,
                     lease_expires_at=None)


def expire_overdue(session: Session, now: datetime, message: str, limit: int = 1000) -> int:
    """queued -> expired for every job past its deadline.

    Not a batch's lines: their deadline is the batch's window, and the control process
    ends them with the batch (`expire_batch_lines`, code batch_expired), so their error
    lines say the batch expired rather than the sweeper's `expired`.
    """
    target = VERBS["expire_overdue"].target
    overdue = (
        select(Job.id)
        .where(_from("expire_overdue"), Job.expires_at < now, Job.batch_id.is_(None))
        .limit(limit)
        # Materialized, so the overdue jobs are found once: as an IN-subquery, with stale
        # statistics on a queue grown from empty, Postgres planned a nested loop that
        # rescanned the queued rows for each one (0.2-0.8 s a sweep at 2,000 queued).
        .cte("overdue")
        .prefix_with("MATERIALIZED")
    )
    rows = _execute_move(
        session,
        update(Job)
        .where(Job.id.in_(select(overdue.c.id)), _from("expire_overdue"))
        .values(status=target, finished_at=now, error_code="expired", error_message=message)
        .returning(*_MOVED_COLUMNS),
        target, now,
    )
    _add_deliveries(session, target, rows)
    _note_moved(session, "task-revoked", rows, now, expired=True, terminated=False)
    return len(rows)


# -- a batch's lines --------------------------------------------------------------------


def _stop_batch_lines(session: Session, verb: str, batch_id: str, code: str,
                      message: str) -> list[uuid.UUID]:
    now = utcnow()
    target = VERBS[verb].target
    rows = _execute_move(
        session,
        update(Job)
        .where(Job.batch_id == batch_id, _from(verb))
        .values(status=target, finished_at=now, error_code=code,
                error_message=message, lease_expires_at=None)
        .returning(Job.id, Job.started_at, *_SUMMARY_COLUMNS),
        target, now,
    )
    _note_moved(session, "task-revoked", rows, now,
                expired=VERBS[verb].target == JobStatus.expired, terminated=False)
    return [row.id for row in rows if row.started_at is not None]


def cancel_batch_lines(session: Session, batch_id: str, code: str,
                       message: str) -> list[uuid.UUID]:
    """The batch's queued and running lines end as cancelled (its cancellation or its
    failure); returns those that were running, whose workers are to drop them."""
    return _stop_batch_lines(session, "cancel_batch_lines", batch_id, code, message)


def expire_batch_lines(session: Session, batch_id: str, code: str,
                       message: str) -> list[uuid.UUID]:
    """The batch's completion window ended: its queued and running lines end as expired,
    as OpenAI's do; returns those that were running, whose workers are to drop them."""
    return _stop_batch_lines(session, "expire_batch_lines", batch_id, code, message)
