"""Repository functions for files and batches. They flush; callers commit.

A batch moves validating -> in_progress -> finalizing -> completed, or to failed (its file
did not validate, or its work kept failing), cancelling -> cancelled, or expired: the
table is in status.py, and each move is a named, guarded verb in transitions.py.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared.batches import status as batch_status
from shared.batches import transitions as batch_transitions
from shared.batches.status import BatchStatus
from shared.jobs.status import JobStatus
from shared.models import Batch, Job, StoredFile, Tenant
from shared.timeutil import utcnow
from shared.usage import ledger as usage_ledger

# Ids are ours (`file-<hex>`, `batch_<hex>`); anything else cannot name a row.
_ID = re.compile(r"^(file-|batch_)[0-9a-f]{24}$")
# Not yet ended, and ended (see status.py), as tuples for IN lists.
ACTIVE: tuple[BatchStatus, ...] = tuple(sorted(batch_status.ACTIVE))
TERMINAL: tuple[BatchStatus, ...] = tuple(sorted(batch_status.TERMINAL))


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(12)}"


# -- files ------------------------------------------------------------------------------


def expiry(created_at: datetime, keep: timedelta | None) -> datetime | None:
    """When a file made at `created_at` and kept for `keep` expires (None: never)."""
    return None if keep is None else created_at + keep


def add_file(session: Session, *, file_id: str, tenant_id: str, purpose: str, filename: str,
             size: int, object_key: str, keep: timedelta | None) -> StoredFile:
    """`keep`: the file's own `expires_after`, else its tenant's retention (None: kept
    until deleted)."""
    now = utcnow()
    row = StoredFile(id=file_id, tenant_id=tenant_id, purpose=purpose, filename=filename,
                     bytes=size, object_key=object_key, created_at=now,
                     expires_at=expiry(now, keep))
    session.add(row)
    session.flush()
    return row


def get_file(session: Session, file_id: str, tenant_id: str | None,
             lock: str | None = None) -> StoredFile | None:
    """The file, if `tenant_id` may see it, purged or not (the caller tells the two apart,
    so another tenant's purged file is not found, never gone). `lock` ("share" or "update")
    holds its row until the transaction ends: a batch naming the file and the file's
    deletion serialise on it."""
    if not _ID.match(file_id):
        return None
    row = session.get(StoredFile, file_id, with_for_update=(
        None if lock is None else {"read": lock == "share"}))
    if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
        return None
    return row


def list_files(session: Session, tenant_id: str | None, purpose: str | None, limit: int,
               after: str | None) -> tuple[list[StoredFile], bool]:
    """A page of the files whose bytes are still there: purged ones are not listed."""
    conditions = [StoredFile.purged_at.is_(None)]
    if purpose:
        conditions.append(StoredFile.purpose == purpose)
    return _after_page(session, StoredFile, tenant_id, limit, after, conditions)


def tenant_retention(session: Session, tenant_id: str) -> int | None:
    """The tenant's own retention in seconds; None for the server's default (as for a
    tenant without a row, when auth is off)."""
    return session.scalar(select(Tenant.retention_seconds).where(Tenant.id == tenant_id))


def file_in_use(session: Session, file_id: str) -> bool:
    """Whether a batch not yet ended reads this file as its input."""
    return session.scalar(
        select(Batch.id).where(Batch.input_file_id == file_id, Batch.status.in_(ACTIVE))
        .limit(1)
    ) is not None


def delete_file(session: Session, row: StoredFile) -> None:
    session.delete(row)
    session.flush()


def _after_page(session: Session, entity: Any, tenant_id: str | None, limit: int,
                after: str | None, conditions: list[Any]) -> tuple[list[Any], bool]:
    """OpenAI's pagination: newest first, the page after the object with id `after`.

    An `after` the caller cannot see (unknown, or another tenant's) is ignored alike, so
    the answer does not tell whether such an id exists."""
    stmt = select(entity).where(*conditions)
    if tenant_id is not None:
        stmt = stmt.where(entity.tenant_id == tenant_id)
    if after and _ID.match(after):
        anchor = session.get(entity, after)
        if anchor is not None and tenant_id is not None and anchor.tenant_id != tenant_id:
            anchor = None
        if anchor is not None:
            stmt = stmt.where(or_(entity.created_at < anchor.created_at,
                                  and_(entity.created_at == anchor.created_at,
                                       entity.id < anchor.id)))
    rows = list(session.scalars(
        stmt.order_by(entity.created_at.desc(), entity.id.desc()).limit(limit + 1)
    ))
    return rows[:limit], len(rows) > limit


# -- batches ----------------------------------------------------------------------------


def add_batch(session: Session, *, tenant_id: str, endpoint: str, input_file_id: str,
              completion_window: timedelta, window_text: str, priority: int,
              metadata: dict[str, str] | None, webhook_url: str | None = None,
              webhook_events: list[str] | None = None,
              output_expires_after_seconds: int | None = None) -> Batch:
    now = utcnow()
    batch = batch_transitions.created(
        id=new_batch_id(), tenant_id=tenant_id, endpoint=endpoint, input_file_id=input_file_id,
        completion_window=window_text, priority=priority,
        metadata_=metadata, webhook_url=webhook_url, webhook_events=webhook_events,
        lines_expanded=0, total=0, created_at=now,
        expires_at=now + completion_window,
        output_expires_after_seconds=output_expires_after_seconds,
    )
    session.add(batch)
    session.flush()
    return batch


def get_batch(session: Session, batch_id: str, tenant_id: str | None) -> Batch | None:
    """The batch, if `tenant_id` may see it, purged or not (as `get_file`)."""
    if not _ID.match(batch_id):
        return None
    batch = session.get(Batch, batch_id, populate_existing=True)
    if batch is None or (tenant_id is not None and batch.tenant_id != tenant_id):
        return None
    return batch


def list_batches(session: Session, tenant_id: str | None, limit: int,
                 after: str | None) -> tuple[list[Batch], bool]:
    """A page of the batches retention has not purged."""
    return _after_page(session, Batch, tenant_id, limit, after, [Batch.purged_at.is_(None)])


@dataclass(frozen=True)
class Counts:
    total: int
    completed: int
    failed: int


def counts(session: Session, batches: Sequence[Batch]) -> dict[str, Counts]:
    """Live request counts: finished jobs by outcome, per batch, in one query."""
    ids = [b.id for b in batches]
    done: dict[str, dict[str, int]] = {i: {} for i in ids}
    if ids:
        rows = session.execute(
            select(Job.batch_id, Job.status, func.count())
            .where(Job.batch_id.in_(ids),
                   Job.status.in_([s for s in JobStatus if s not in
                                   (JobStatus.queued, JobStatus.running)]))
            .group_by(Job.batch_id, Job.status)
        ).all()
        for batch_id, status, n in rows:
            done[batch_id][JobStatus(status).value] = n
    out = {}
    for b in batches:
        by = done[b.id]
        completed = by.get("succeeded", 0)
        out[b.id] = Counts(total=b.total, completed=completed,
                           failed=sum(by.values()) - completed)
    return out


def take_lease(session: Session, batch_id: str, seconds: float) -> bool:
    """Holds the batch for this process's work unless another live process holds it."""
    now = utcnow()
    return bool(session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status.in_(ACTIVE),
               or_(Batch.lease_expires_at.is_(None), Batch.lease_expires_at < now))
        .values(lease_expires_at=now + timedelta(seconds=seconds))
        .execution_options(synchronize_session=False)
    ).rowcount)


def renew_lease(session: Session, batch_id: str, seconds: float) -> None:
    session.execute(
        update(Batch).where(Batch.id == batch_id)
        .values(lease_expires_at=utcnow() + timedelta(seconds=seconds))
        .execution_options(synchronize_session=False)
    )


def release_lease(session: Session, batch_id: str) -> None:
    session.execute(
        update(Batch).where(Batch.id == batch_id).values(lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )


def needing_work(session: Session, now: datetime) -> list[str]:
    """Active batches no live process holds and none is backing off from."""
    return list(session.scalars(
        select(Batch.id)
        .where(Batch.status.in_(ACTIVE),
               or_(Batch.lease_expires_at.is_(None), Batch.lease_expires_at < now),
               or_(Batch.retry_at.is_(None), Batch.retry_at <= now))
        .order_by(Batch.created_at)
        .limit(100)
    ))


def work_failed(session: Session, batch_id: str, failures: int, retry_at: datetime) -> None:
    """Records how often the batch's work has failed in a row, and holds it back until
    `retry_at`."""
    session.execute(
        update(Batch).where(Batch.id == batch_id)
        .values(work_failures=failures, retry_at=retry_at)
        .execution_options(synchronize_session=False)
    )


def work_succeeded(session: Session, batch_id: str) -> None:
    """The batch's work went through: earlier failures no longer count toward failing it."""
    session.execute(
        update(Batch).where(Batch.id == batch_id, Batch.work_failures > 0)
        .values(work_failures=0, retry_at=None)
        .execution_options(synchronize_session=False)
    )


def insert_lines(session: Session, rows: list[dict[str, Any]]) -> None:
    """Jobs for a chunk of lines; a line already expanded (a resumed chunk) is skipped. The
    lines inserted are counted in the usage ledger, by one statement for the chunk."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    stmt = module.insert(Job).on_conflict_do_nothing(index_elements=["batch_id", "batch_line"])
    inserted = session.execute(stmt.returning(*usage_ledger.CREATED_COLUMNS), rows).all()
    tally = usage_ledger.Tally()
    tally.created(inserted)
    tally.write(session)


def advance(session: Session, batch_id: str, expanded_from: int, expanded_to: int) -> bool:
    """Records lines [expanded_from, expanded_to) as expanded, fenced by where it started."""
    return bool(session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.lines_expanded == expanded_from)
        .values(lines_expanded=expanded_to)
        .execution_options(synchronize_session=False)
    ).rowcount)


def unfinished(session: Session, batch_id: str) -> int:
    return session.scalar(
        select(func.count()).select_from(Job)
        .where(Job.batch_id == batch_id,
               Job.status.in_((JobStatus.queued, JobStatus.running)))
    ) or 0


def jobs_in_line_order(session: Session, batch_id: str) -> Iterator[Job]:
    """The batch's jobs by line, streamed in pages rather than loaded at once."""
    last = -1
    while True:
        page = list(session.scalars(
            select(Job).where(Job.batch_id == batch_id, Job.batch_line > last)
            .order_by(Job.batch_line).limit(1000)
        ))
        if not page:
            return
        yield from page
        last = page[-1].batch_line or 0
        session.expunge_all()

