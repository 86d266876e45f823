"""The retention sweeper: removes, in bounded chunks, what retention says is due.

It runs in the control process, in one process at a time (an advisory lock of its own,
shared/exclusive.py), apart from the job sweeper so that a long removal never delays the
reaping of lapsed leases. Each pass, in order:

1. images of ended jobs that do not keep theirs (`keep_image` false);
2. ended jobs past their tenant's retention (a batch's lines wait for their batch);
3. ended batches past it: their lines first, then the batch;
4. files past their `expires_at`, except the input of a batch that has not ended;
5. rows stripped longer than VLMQ_TOMBSTONE_SECONDS ago;
6. every VLMQ_ORPHAN_SWEEP_SECONDS, objects that no row names (shared/retention/orphans.py).

Every removal is objects first, then rows (shared/retention/removal.py), and every query
selects only what is due now, so the sweeper can be killed at any point and the next pass
finishes the work without removing anything else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from shared.batches.status import ACTIVE as BATCH_ACTIVE
from shared.batches.status import TERMINAL as BATCH_TERMINAL
from shared.exclusive import ExclusiveLoop
from shared.jobs.status import TERMINAL
from shared.models import Batch, Job, StoredFile, Tenant
from shared.retention import orphans, removal
from shared.retention.policy import retention
from shared.retention.removal import DUE_COLUMNS, DueFile, DueJob
from shared.settings import RetentionSettings
from shared.storage import ObjectStore
from shared.timeutil import utcnow

log = logging.getLogger(__name__)

# pg_try_advisory_lock key: "vlmr" in ASCII, beside the job sweeper's "vlmq".
RETENTION_LOCK_KEY = 0x766C6D72

T = TypeVar("T")


@dataclass
class Swept:
    """What one pass removed."""

    images: int = 0
    jobs: int = 0
    batches: int = 0
    files: int = 0
    tombstones: int = 0
    orphans: int = 0

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


class RetentionSweeper(ExclusiveLoop):
    name = "retention sweeper"

    def __init__(self, engine: Engine, sessions: sessionmaker[Session], store: ObjectStore,
                 settings: RetentionSettings,
                 on_swept: Callable[[Swept, float], None] | None = None) -> None:
        super().__init__(engine, RETENTION_LOCK_KEY, settings.retention_sweep_seconds)
        self.sessions = sessions
        self.store = store
        self.settings = settings
        # Told what each pass removed and how long it took (the control process's metrics).
        self.on_swept = on_swept
        self.chunk = settings.retention_chunk
        self._orphans_due = time.monotonic() + settings.orphan_sweep_seconds

    def work(self) -> None:
        started = time.monotonic()
        swept = self.sweep()
        seconds = time.monotonic() - started
        if self.on_swept is not None:
            self.on_swept(swept, seconds)
        if swept:
            # The line `make soak-retention` reads the sweeper's cost from.
            log.info("retention: removed %s in %.3fs", swept, seconds)

    def sweep(self, *, orphans_now: bool = False) -> Swept:
        """One pass over everything due; public so tests and `vlmq` commands can drive it."""
        swept = Swept()
        now = utcnow()
        swept.images = self._drain(self._images_due, lambda due: removal.drop_images(
            self.sessions, self.store, due))
        for tenant_id, keep_for in self._tenants():
            cutoff = now - keep_for
            swept.jobs += self._drain(lambda: self._jobs_due(tenant_id, cutoff),
                                      self._remove_jobs)
            for batch_id in self._batches_due(tenant_id, cutoff):
                swept.jobs += self._drain(lambda: self._lines_due(batch_id), self._remove_jobs)
                with self.sessions.begin() as session:
                    swept.batches += removal.strip_batch(session, batch_id, utcnow())
        swept.files = self._drain(lambda: self._files_due(now), lambda due: removal.remove_files(
            self.sessions, self.store, due))
        swept.tombstones = self._delete_tombstones(
            now - timedelta(seconds=self.settings.tombstone_seconds))
        if self._orphan_pass_due(orphans_now):
            swept.orphans = orphans.remove_orphans(
                self.sessions, self.store, timedelta(seconds=self.settings.orphan_min_age_seconds))
        return swept

    def _drain(self, due: Callable[[], Sequence[T]],
               remove: Callable[[Sequence[T]], int]) -> int:
        """Removes chunk after chunk until nothing is due (or the process stops)."""
        removed = 0
        while not self.stopping:
            chunk = due()
            if not chunk:
                break
            done = remove(chunk)
            removed += done
            if len(chunk) < self.chunk or done == 0:
                break
        return removed

    def _remove_jobs(self, due: Sequence[DueJob]) -> int:
        return removal.remove_jobs(self.sessions, self.store, due)

    def _tenants(self) -> list[tuple[str, timedelta]]:
        default = self.settings.retention_seconds
        with self.sessions() as session:
            rows = session.execute(select(Tenant.id, Tenant.retention_seconds)).all()
        kept = ((row.id, retention(row.retention_seconds, default)) for row in rows)
        return [(tenant, keep_for) for tenant, keep_for in kept if keep_for is not None]

    def _images_due(self) -> list[DueJob]:
        with self.sessions() as session:
            return _due_jobs(session, select(*DUE_COLUMNS).where(
                ~Job.keep_image, ~Job.images_dropped, Job.finished_at.is_not(None),
                or_(Job.image_key.is_not(None), Job.extra_images.is_not(None)),
            ).order_by(Job.finished_at).limit(self.chunk))

    def _jobs_due(self, tenant_id: str, cutoff: datetime) -> list[DueJob]:
        with self.sessions() as session:
            return _due_jobs(session, select(*DUE_COLUMNS).where(
                Job.tenant_id == tenant_id, Job.finished_at < cutoff,
                Job.purged_at.is_(None), Job.batch_id.is_(None),
                Job.status.in_(sorted(TERMINAL)),
            ).order_by(Job.finished_at).limit(self.chunk))

    def _batches_due(self, tenant_id: str, cutoff: datetime) -> list[str]:
        ended = func.coalesce(Batch.completed_at, Batch.failed_at, Batch.expired_at,
                              Batch.cancelled_at)
        with self.sessions() as session:
            return list(session.scalars(select(Batch.id).where(
                Batch.tenant_id == tenant_id, Batch.status.in_(sorted(BATCH_TERMINAL)),
                Batch.purged_at.is_(None), ended < cutoff,
            ).order_by(ended).limit(self.chunk)))

    def _lines_due(self, batch_id: str) -> list[DueJob]:
        with self.sessions() as session:
            return _due_jobs(session, select(*DUE_COLUMNS).where(
                Job.batch_id == batch_id, Job.purged_at.is_(None),
                Job.status.in_(sorted(TERMINAL)),
            ).limit(self.chunk))

    def _files_due(self, now: datetime) -> list[DueFile]:
        # An input file stays while a batch that reads it has not ended.
        in_use = select(Batch.input_file_id).where(Batch.status.in_(sorted(BATCH_ACTIVE)))
        with self.sessions() as session:
            return [DueFile(row.id, row.object_key) for row in session.execute(
                select(StoredFile.id, StoredFile.object_key).where(
                    StoredFile.purged_at.is_(None), StoredFile.expires_at < now,
                    StoredFile.id.not_in(in_use),
                ).order_by(StoredFile.expires_at).limit(self.chunk))]

    def _delete_tombstones(self, before: datetime) -> int:
        removed = 0
        while not self.stopping:
            with self.sessions.begin() as session:
                done = removal.delete_tombstones(session, before, self.chunk)
            removed += done
            if done == 0:
                break
        return removed

    def _orphan_pass_due(self, now: bool) -> bool:
        if now:
            return True
        period = self.settings.orphan_sweep_seconds
        if period <= 0 or time.monotonic() < self._orphans_due:
            return False
        self._orphans_due = time.monotonic() + period
        return True


def _due_jobs(session: Session, query: Any) -> list[DueJob]:
    return [DueJob(row.id, row.image_key, row.extra_images) for row in session.execute(query)]
