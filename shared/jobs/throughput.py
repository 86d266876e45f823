"""Finished work per minute: what the console's throughput plots read (GET /v1/stats/throughput).

Read only, from the jobs' own `finished_at` and token columns, so it needs no new writes on
the hot path. The scan takes the succeeded jobs that finished in the window, through the
same (status, …) index the queue estimate's throughput count uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.jobs.status import JobStatus
from shared.models import Job
from shared.timeutil import utcnow

MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Minute:
    start: datetime
    images: int  # succeeded jobs: one image each
    prompt_tokens: int
    completion_tokens: int


def per_minute(session: Session, minutes: int, *, tenant_id: str | None,
               model: str | None, now: datetime | None = None) -> list[Minute]:
    """The last `minutes` whole minutes up to and including the current one, oldest first,
    every minute present (zeros where nothing finished). `tenant_id` None: every tenant."""
    end = (now or utcnow()).replace(second=0, microsecond=0)
    start = end - MINUTE * (minutes - 1)
    bucket = _minute_of(session, Job.finished_at)
    stmt = (
        select(bucket, func.count(), func.coalesce(func.sum(Job.prompt_tokens), 0),
               func.coalesce(func.sum(Job.completion_tokens), 0))
        .where(Job.status == JobStatus.succeeded, Job.finished_at >= start)
        .group_by(bucket)
    )
    if tenant_id is not None:
        stmt = stmt.where(Job.tenant_id == tenant_id)
    if model is not None:
        stmt = stmt.where(Job.model == model)
    found = {_as_minute(row[0]): row for row in session.execute(stmt)}
    out = []
    for i in range(minutes):
        moment = start + MINUTE * i
        row = found.get(moment)
        out.append(Minute(moment, int(row[1]), int(row[2]), int(row[3])) if row
                   else Minute(moment, 0, 0, 0))
    return out


def per_minute_empty(minutes: int, now: datetime | None = None) -> list[Minute]:
    """The same minutes with nothing in them."""
    end = (now or utcnow()).replace(second=0, microsecond=0)
    return [Minute(end - MINUTE * (minutes - 1 - i), 0, 0, 0) for i in range(minutes)]


def _minute_of(session: Session, column: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return func.date_trunc("minute", column)
    # SQLite keeps the moment as text in UTC.
    return func.strftime("%Y-%m-%d %H:%M:00", column)


def _as_minute(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(
        timezone.utc)
