"""Writes to the usage ledger (`usage_hours`), each in the transaction that records what it
counts, so the ledger always equals what the jobs table says happened.

On Postgres the count rides in the very statement that inserts or moves the jobs: that
INSERT or UPDATE ... RETURNING is a CTE, and an upsert beside it adds the returned rows,
grouped by tenant and model, to the ledger; no extra round trip at all. SQLite (the
embedded setup: one process, nothing on the network) cannot nest a write in a CTE, so
there the returned rows are tallied in Python and written by one upsert after the move,
in the same transaction.

What is counted where: `accepted` and `images` (each image of a job, uploaded or by
reference) at the hour a job is created; a line created failed is `failed` too. Each
terminal move counts its outcome at the hour it finished; a success adds its tokens and
engine seconds. A retry is no outcome. Nothing here refers to a job or a tenant, so
deleting them (retention, purges) leaves the ledger whole.

Each writing thread adds to its own shard of the hour (API request threads, the
recorder, the sweeper, batch expansion), so concurrent writers do not queue on one hot
row; readers sum the shards.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    CTE,
    ColumnElement,
    Connection,
    Integer,
    Row,
    bindparam,
    case,
    column,
    func,
    or_,
    select,
    table,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import Insert
from sqlalchemy.orm import Session

from shared.db import upsert_insert
from shared.jobs.status import JobStatus
from shared.models import Job, UsageHour, UtcDateTime
from shared.timeutil import as_utc

SHARDS = 16
COUNTERS = ("accepted", "succeeded", "failed", "cancelled", "expired", "images",
            "prompt_tokens", "image_tokens", "completion_tokens", "engine_seconds")
OUTCOMES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled,
                      JobStatus.expired})
# What a success adds beside its count, from the job's row as the move left it.
USAGE = ("prompt_tokens", "image_tokens", "completion_tokens", "engine_seconds")
USAGE_COLUMNS = (Job.prompt_tokens, Job.image_tokens, Job.completion_tokens,
                 Job.engine_seconds)
# What an insert returns for its acceptance to be counted.
CREATED_COLUMNS = (Job.tenant_id, Job.model, Job.status, Job.image_key, Job.image_url,
                   Job.extra_images, Job.created_at)

# The ledger as a bare table: the model's Python-side defaults would add every counter to
# each INSERT ... SELECT, and the upsert names only those it adds to.
_LEDGER = table("usage_hours", *(column(c.name, c.type) for c in UsageHour.__table__.columns))
_KEY = ("tenant_id", "model", "hour", "shard")


def shard() -> int:
    """This thread's shard. Native thread ids are distinct across the processes of a host,
    so two writers share a shard only by the chance of their ids modulo SHARDS."""
    return threading.get_native_id() % SHARDS


def hour_of(moment: datetime) -> datetime:
    """The UTC hour a moment falls in: the ledger's grain."""
    return as_utc(moment).astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def _upsert(stmt: Insert, added: Iterable[str]) -> Insert:
    """ON CONFLICT adds to the row the shard already has for the hour."""
    return stmt.on_conflict_do_update(
        index_elements=list(_KEY),
        set_={name: _LEDGER.c[name] + stmt.excluded[name] for name in added},
    )


def _key_columns(source: CTE, at: datetime | None) -> list[ColumnElement[Any]]:
    """The ledger row's key; with no `at`, the hour and shard are parameters of each
    execution (`where`), so one statement serves every call."""
    return [source.c.tenant_id, source.c.model,
            bindparam("usage_hour", None if at is None else hour_of(at),
                      type_=UtcDateTime()).label("hour"),
            bindparam("usage_shard", None if at is None else shard(),
                      type_=Integer()).label("shard")]


def where(at: datetime) -> dict[str, Any]:
    """The parameters of a statement built with no `at`."""
    return {"usage_hour": hour_of(at), "usage_shard": shard()}


def _from_rows(source: CTE, at: datetime | None,
               counts: Mapping[str, ColumnElement[Any]]) -> Insert:
    chosen = (select(*_key_columns(source, at), *(c.label(n) for n, c in counts.items()))
              .group_by(source.c.tenant_id, source.c.model)
              # Rows locked in one order: two writers that share a shard do not deadlock
              # on the rows of one statement.
              .order_by(source.c.tenant_id, source.c.model))
    return _upsert(postgresql.insert(_LEDGER).from_select([*_KEY, *counts], chosen), counts)


def count_moved(moved: CTE, outcome: JobStatus, at: datetime | None, *,
                usage: bool) -> Insert:
    """Postgres: the upsert that counts the jobs a terminal move returned (its RETURNING
    names tenant_id and model, and the USAGE_COLUMNS with `usage`) as `outcome` at the hour
    of `at` (None: given by `where` at execution), to run as a CTE beside the move."""
    assert outcome in OUTCOMES
    counts: dict[str, ColumnElement[Any]] = {str(outcome): func.count()}
    if usage:
        counts.update({name: func.coalesce(func.sum(moved.c[name]), 0) for name in USAGE})
    return _from_rows(moved, at, counts)


def count_created(created: CTE, at: datetime | None) -> Insert:
    """Postgres: the upsert that counts the jobs an INSERT returned (CREATED_COLUMNS) as
    accepted at the hour of `at`, their creation (None: given by `where` at execution)."""
    c = created.c
    return _from_rows(created, at, {
        "accepted": func.count(),
        # A job of several images counts each (the first, and those in extra_images).
        "images": func.coalesce(func.sum(
            case((or_(c.image_key.is_not(None), c.image_url.is_not(None)), 1), else_=0)
            + func.coalesce(func.json_array_length(c.extra_images), 0)), 0),
        "failed": func.count().filter(c.status == JobStatus.failed),
    })


def insert_job(conn: Connection, row: dict[str, Any]) -> None:
    """Inserts one job and counts its acceptance: on Postgres one statement, so one round
    trip on an autocommitted connection; on SQLite two, in the caller's transaction."""
    if conn.dialect.name == "postgresql":
        conn.execute(_insert_counted(tuple(row)), {**row, **where(row["created_at"])})
        return
    conn.execute(sqlite.insert(Job), row)
    tally = Tally()
    tally.created([row])
    tally.write(conn)


@functools.lru_cache(maxsize=16)
def _insert_counted(columns: tuple[str, ...]) -> Insert:
    """One statement per set of columns, built once: building and compiling it per job
    would cost the API a millisecond of CPU each."""
    jobs = Job.__table__.c
    created = (postgresql.insert(Job)
               .values({name: bindparam(name, type_=jobs[name].type) for name in columns})
               .returning(*CREATED_COLUMNS).cte("created"))
    return count_created(created, None).add_cte(created)


class Tally:
    """Counts gathered in Python and written by one upsert: what SQLite's moves returned,
    and a batch's lines that an INSERT ... ON CONFLICT DO NOTHING actually inserted."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, datetime], dict[str, float]] = {}

    def __bool__(self) -> bool:
        return bool(self._rows)

    def add(self, tenant_id: str, model: str, at: datetime, **counts: float) -> None:
        row = self._rows.setdefault((tenant_id, model, hour_of(at)), {})
        for name, value in counts.items():
            row[name] = row.get(name, 0) + (value or 0)

    def created(self, rows: Iterable[Mapping[str, Any] | Row[Any]]) -> None:
        for row in rows:
            job = row if isinstance(row, Mapping) else row._mapping
            self.add(job["tenant_id"], job["model"], job["created_at"], accepted=1,
                     images=int(job.get("image_key") is not None
                                or job.get("image_url") is not None)
                     + len(job.get("extra_images") or ()),
                     failed=int(job["status"] == JobStatus.failed))

    def moved(self, rows: Iterable[Row[Any]], outcome: JobStatus, at: datetime, *,
              usage: bool) -> None:
        assert outcome in OUTCOMES
        for row in rows:
            extra = {name: getattr(row, name) for name in USAGE} if usage else {}
            self.add(row.tenant_id, row.model, at, **{str(outcome): 1}, **extra)

    def write(self, conn: Connection | Session) -> None:
        """One upsert for every (tenant, model, hour) gathered, in key order."""
        if not self._rows:
            return
        here = shard()
        values = [
            {"tenant_id": tenant, "model": model, "hour": hour, "shard": here,
             **{name: counts.get(name, 0) for name in COUNTERS}}
            for (tenant, model, hour), counts in sorted(self._rows.items())
        ]
        bind = conn.get_bind() if isinstance(conn, Session) else conn
        stmt = upsert_insert(bind, _LEDGER).values(values)
        conn.execute(_upsert(stmt, COUNTERS))  # type: ignore[arg-type]
        self._rows.clear()
