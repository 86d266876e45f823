"""Reads of the usage ledger: totals per tenant and model, or per tenant and day, over a
window of hours. GET /v1/usage, `vlmq usage` and the control process's metrics read here.

The ledger's grain is the hour (UTC): a window takes the hours that begin within
[start, end), and a day is a UTC day.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from shared.errors import InvalidInput
from shared.models import UsageHour
from shared.timeutil import as_utc, utcnow
from shared.usage.ledger import COUNTERS

GROUPS = ("model", "day")
DEFAULT_DAYS = 30
MAX_DAYS = 400  # a year and then some, so "last year" fits in one request
# Longer than any ISO 8601 moment with a zone and microseconds.
_MAX_MOMENT_CHARS = 40


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Counters:
    accepted: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    expired: int = 0
    images: int = 0
    prompt_tokens: int = 0
    image_tokens: int = 0
    completion_tokens: int = 0
    engine_seconds: float = 0.0

    def __add__(self, other: Counters) -> Counters:
        return Counters(**{n: getattr(self, n) + getattr(other, n) for n in COUNTERS})


assert tuple(f.name for f in fields(Counters)) == COUNTERS


@dataclass(frozen=True)
class Usage:
    """One group's totals: a tenant's on a model (group_by model) or on a day (day)."""

    tenant_id: str
    model: str | None
    day: date | None
    counters: Counters


def parse_moment(value: str, name: str) -> datetime:
    """An ISO 8601 date (its first moment) or moment; one without a zone is UTC."""
    try:
        if len(value) > _MAX_MOMENT_CHARS or "\x00" in value:
            raise ValueError(value)
        return as_utc(datetime.fromisoformat(value)).astimezone(timezone.utc)
    except (ValueError, OverflowError):
        raise InvalidInput(f"{name} is not an ISO 8601 date or time, e.g. 2025-06-01 or "
                           "2025-06-01T12:00:00Z", code="invalid_time") from None


def window(start: str | None, end: str | None, now: datetime | None = None) -> Window:
    """The window asked for: `end` defaults to now, `start` to DEFAULT_DAYS before `end`;
    it must run forwards and span at most MAX_DAYS."""
    last = parse_moment(end, "end") if end is not None else (now or utcnow())
    if start is not None:
        first = parse_moment(start, "start")
    else:
        try:
            first = last - timedelta(days=DEFAULT_DAYS)
        except OverflowError:  # an end in year 1
            raise InvalidInput("end is too early", code="invalid_range") from None
    if first >= last:
        raise InvalidInput("start must be before end", code="invalid_range")
    if last - first > timedelta(days=MAX_DAYS):
        raise InvalidInput(f"the window spans more than {MAX_DAYS} days; ask for less",
                           code="invalid_range")
    return Window(first, last)


def group_by(value: str) -> str:
    if value not in GROUPS:
        raise InvalidInput(f"group_by must be one of {', '.join(GROUPS)}",
                           code="invalid_group_by")
    return value


def _sums() -> list[ColumnElement[Any]]:
    return [func.coalesce(func.sum(getattr(UsageHour, n)), 0).label(n) for n in COUNTERS]


def _counters(row: Any) -> Counters:
    # Postgres sums bigints as numeric: back to int for JSON and the CLI.
    return Counters(**{n: (float if n == "engine_seconds" else int)(getattr(row, n))
                       for n in COUNTERS})


def _day(session: Session) -> ColumnElement[Any]:
    """The UTC day of a ledger hour, as the dialect writes it (read back by _as_date)."""
    if session.get_bind().dialect.name == "postgresql":
        return func.date_trunc("day", func.timezone("UTC", UsageHour.hour)).label("day")
    return func.substr(UsageHour.hour, 1, 10).label("day")  # stored as ISO text


def _as_date(value: date | datetime | str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(value[:10])


def totals(session: Session, span: Window, by: str, tenant_id: str | None) -> list[Usage]:
    """Totals per (tenant, model) or (tenant, day) over the hours in `span`, the shards
    summed; only `tenant_id`'s with one given. Ordered by tenant, then model or day."""
    key = UsageHour.model.label("model") if by == "model" else _day(session)
    stmt = (select(UsageHour.tenant_id, key, *_sums())
            .where(UsageHour.hour >= span.start, UsageHour.hour < span.end)
            .group_by(UsageHour.tenant_id, key)
            .order_by(UsageHour.tenant_id, key))
    if tenant_id is not None:
        stmt = stmt.where(UsageHour.tenant_id == tenant_id)
    rows = session.execute(stmt).all()
    if by == "model":
        return [Usage(r.tenant_id, r.model, None, _counters(r)) for r in rows]
    return [Usage(r.tenant_id, None, _as_date(r.day), _counters(r)) for r in rows]


def per_tenant_and_model(session: Session, since: datetime | None = None,
                         before: datetime | None = None) -> dict[tuple[str, str], Counters]:
    """Totals per (tenant, model) of the hours in [since, before), open on either side."""
    stmt = (select(UsageHour.tenant_id, UsageHour.model, *_sums())
            .group_by(UsageHour.tenant_id, UsageHour.model))
    if since is not None:
        stmt = stmt.where(UsageHour.hour >= since)
    if before is not None:
        stmt = stmt.where(UsageHour.hour < before)
    return {(r.tenant_id, r.model): _counters(r) for r in session.execute(stmt)}


def grand_total(rows: list[Usage]) -> Counters:
    total = Counters()
    for row in rows:
        total = total + row.counters
    return total
