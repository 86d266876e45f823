"""Everything of one tenant, counted and removed: `vlmq tenants purge NAME`.

The tenant's queued and running jobs are cancelled first (a running one's worker is told
to drop it, and its late result is refused by fencing), then its jobs, batches and files go
for good, objects before rows, in chunks, so an interrupted purge is finished by running
it again. Its keys and its tenant row stay (revoke the keys first, or new jobs may arrive
while it runs), and so does its usage ledger, which outlives every deletion.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.batches.status import ACTIVE as BATCH_ACTIVE
from shared.errors import Conflict, NotFound
from shared.jobs import transitions
from shared.jobs.images import stored_keys
from shared.jobs.status import JobStatus
from shared.models import Batch, Job, StoredFile, Tenant, WebhookDelivery
from shared.queue import request_abort
from shared.retention.removal import delete_deliveries
from shared.settings import BrokerSettings
from shared.storage import ObjectStore
from shared.timeutil import utcnow

PURGED_MESSAGE = "cancelled: the tenant's data was purged by an operator"
_ACTIVE_JOBS = (JobStatus.queued, JobStatus.running)


@dataclass(frozen=True)
class TenantData:
    jobs: int
    active_jobs: int  # queued or running: cancelled by the purge
    images: int  # objects in the store: uploaded images still kept
    batches: int
    active_batches: int
    files: int
    deliveries: int


def count(session: Session, tenant_id: str) -> TenantData:
    if session.get(Tenant, tenant_id) is None:
        raise NotFound(f"no tenant {tenant_id!r}; `vlmq keys list` shows the tenants")

    def number(query: object) -> int:
        return int(session.scalar(query) or 0)  # type: ignore[call-overload]

    jobs = select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id)
    batches = select(func.count()).select_from(Batch).where(Batch.tenant_id == tenant_id)
    return TenantData(
        jobs=number(jobs),
        active_jobs=number(jobs.where(Job.status.in_(_ACTIVE_JOBS))),
        images=number(jobs.where(Job.image_key.is_not(None))),
        batches=number(batches),
        active_batches=number(batches.where(Batch.status.in_(sorted(BATCH_ACTIVE)))),
        files=number(select(func.count()).select_from(StoredFile)
                     .where(StoredFile.tenant_id == tenant_id)),
        deliveries=number(select(func.count()).select_from(WebhookDelivery).where(
            WebhookDelivery.job_id.in_(select(Job.id).where(Job.tenant_id == tenant_id))
            | WebhookDelivery.batch_id.in_(select(Batch.id).where(Batch.tenant_id == tenant_id)))),
    )


def purge(sessions: sessionmaker[Session], store: ObjectStore, broker: BrokerSettings,
          tenant_id: str, *, chunk: int = 500,
          progress: Callable[[str, int], None] = lambda what, n: None) -> TenantData:
    """Removes everything of the tenant; returns what there was. A tenant with batches not
    yet ended is a Conflict: their expansion would go on writing lines meanwhile."""
    with sessions() as session:
        before = count(session, tenant_id)
    if before.active_batches:
        raise Conflict(
            f"tenant {tenant_id} has {before.active_batches} batches that have not ended; "
            "cancel them (POST /v1/batches/{id}/cancel) and wait until they are cancelled, "
            "then purge", code="batches_active")
    while cancelled := _cancel_active(sessions, broker, tenant_id, chunk):
        progress("jobs cancelled", cancelled)
    while removed := _remove_jobs(sessions, store, tenant_id, chunk):
        progress("jobs removed", removed)
    with sessions.begin() as session:
        ids = select(Batch.id).where(Batch.tenant_id == tenant_id)
        delete_deliveries(session, WebhookDelivery.batch_id.in_(ids))
        progress("batches removed", session.execute(
            delete(Batch).where(Batch.tenant_id == tenant_id)
            .execution_options(synchronize_session=False)).rowcount)
    while removed := _remove_files(sessions, store, tenant_id, chunk):
        progress("files removed", removed)
    return before


def _cancel_active(sessions: sessionmaker[Session], broker: BrokerSettings, tenant_id: str,
                   chunk: int) -> int:
    running: list[uuid.UUID] = []
    with sessions.begin() as session:
        rows = session.execute(select(Job.id, Job.status).where(
            Job.tenant_id == tenant_id, Job.status.in_(_ACTIVE_JOBS)).limit(chunk)).all()
        now = utcnow()
        for row in rows:
            if transitions.cancel(session, row.id, code="cancelled", message=PURGED_MESSAGE,
                                  now=now) and row.status == JobStatus.running:
                running.append(row.id)
    for job_id in running:  # after the commit, as for a client's cancel
        request_abort(broker, job_id)
    return len(rows)


def _remove_jobs(sessions: sessionmaker[Session], store: ObjectStore, tenant_id: str,
                 chunk: int) -> int:
    with sessions() as session:
        rows = session.execute(select(Job.id, Job.image_key, Job.extra_images).where(
            Job.tenant_id == tenant_id, Job.status.not_in(_ACTIVE_JOBS)).limit(chunk)).all()
    if not rows:
        return 0
    store.delete_many([key for row in rows
                       for key in stored_keys(row.image_key, row.extra_images)])
    ids = [row.id for row in rows]
    with sessions.begin() as session:
        delete_deliveries(session, WebhookDelivery.job_id.in_(ids))
        # Guarded again: only ended jobs, so a job requeued meanwhile is not lost mid-run.
        return session.execute(delete(Job).where(Job.id.in_(ids), Job.status.not_in(
            _ACTIVE_JOBS)).execution_options(synchronize_session=False)).rowcount


def _remove_files(sessions: sessionmaker[Session], store: ObjectStore, tenant_id: str,
                  chunk: int) -> int:
    with sessions() as session:
        rows = session.execute(select(StoredFile.id, StoredFile.object_key).where(
            StoredFile.tenant_id == tenant_id).limit(chunk)).all()
    if not rows:
        return 0
    store.delete_many([row.object_key for row in rows])
    with sessions.begin() as session:
        return session.execute(delete(StoredFile).where(
            StoredFile.id.in_([row.id for row in rows]))
            .execution_options(synchronize_session=False)).rowcount
