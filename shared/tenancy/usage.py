"""What a tenant has in flight, as its batch caps measure it."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.batches.repo import ACTIVE
from shared.batches.status import BatchStatus
from shared.jobs.status import JobStatus
from shared.models import Batch, Job


def active_batches(session: Session, tenant_id: str) -> int:
    """Batches of the tenant not yet ended (validating to cancelling)."""
    return session.scalar(
        select(func.count()).select_from(Batch)
        .where(Batch.tenant_id == tenant_id, Batch.status.in_(ACTIVE))
    ) or 0


def queued_batch_lines(session: Session, tenant_id: str) -> int:
    """Batch lines of the tenant queued or running, counting a validated batch's lines not
    yet expanded into jobs as queued: expansion runs on its own, so a cap that waited for
    the jobs would let a tenant stack batches faster than they expand. A batch still
    validating counts nothing yet: its line count is unknown until then.
    """
    as_jobs = session.scalar(
        select(func.count()).select_from(Job).where(
            Job.tenant_id == tenant_id,
            Job.status.in_((JobStatus.queued, JobStatus.running)),
            Job.batch_id.is_not(None),
        )
    ) or 0
    unexpanded = session.scalar(
        select(func.coalesce(func.sum(Batch.total - Batch.lines_expanded), 0))
        .where(Batch.tenant_id == tenant_id, Batch.status == BatchStatus.in_progress)
    ) or 0
    return int(as_jobs) + int(unexpanded)
