"""The one place that removes stored data: a job's image, prompt and result, a batch's
metadata, a file's bytes, and the rows left behind.

Removal runs objects first, then rows: an interrupted removal leaves a row that names an
object already gone (the next pass deletes it again, which is no error), never an object
that no row names. What is left of a removed job, batch or file (its id, status and
timestamps, and `purged_at`) answers 410 `expired_data` until `delete_tombstones` takes
the row too. Functions taking a session flush and leave the commit to their caller.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.batches.status import TERMINAL as BATCH_TERMINAL
from shared.errors import Conflict, Gone, NotFound
from shared.jobs.images import stored_keys, without_keys
from shared.jobs.status import TERMINAL
from shared.models import Batch, Job, StoredFile, WebhookAttempt, WebhookDelivery
from shared.storage import ObjectStore
from shared.timeutil import utcnow

# What a removed job keeps: who, what model, its status and timestamps, its counts, and
# its error's code; everything the client sent or got back goes.
_JOB_STRIPPED: dict[str, Any] = dict(
    prompt="", params={}, image_key=None, image_url=None, image_sha256=None, image_bytes=None,
    image_format=None, image_width=None, image_height=None, extra_images=None, custom_id=None,
    idempotency_key=None, request_sha256=None, result_text=None, error_message=None,
    webhook_url=None, webhook_events=None,
)


@dataclass(frozen=True)
class DueJob:
    id: uuid.UUID
    image_key: str | None
    # The job's second and later images (Job.extra_images), whose stored keys go too.
    extra_images: list[dict[str, Any]] | None = None

    @property
    def keys(self) -> list[str]:
        return stored_keys(self.image_key, self.extra_images)


# What a query for due jobs selects.
DUE_COLUMNS = (Job.id, Job.image_key, Job.extra_images)


def _ended() -> Any:
    return Job.status.in_(sorted(TERMINAL))


# -- jobs ---------------------------------------------------------------------------------


def remove_jobs(sessions: sessionmaker[Session], store: ObjectStore,
                due: Sequence[DueJob]) -> int:
    """Strips ended jobs: their images from the store, then their rows' data and webhook
    deliveries. Returns how many rows were stripped (a job stripped meanwhile is skipped)."""
    if not due:
        return 0
    store.delete_many([key for job in due for key in job.keys])
    with sessions.begin() as session:
        return len(strip_jobs(session, [job.id for job in due], utcnow()))


def strip_jobs(session: Session, ids: Sequence[uuid.UUID], now: datetime) -> list[uuid.UUID]:
    """The rows' data goes (their objects must be gone already); only ended jobs."""
    stripped = list(session.scalars(
        update(Job)
        .where(Job.id.in_(ids), _ended(), Job.purged_at.is_(None))
        .values(**_JOB_STRIPPED, purged_at=now)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ))
    if stripped:
        delete_deliveries(session, WebhookDelivery.job_id.in_(stripped))
    return stripped


def delete_deliveries(session: Session, which: Any) -> None:
    # Attempts first: SQLite enforces no ON DELETE CASCADE without a pragma.
    session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(
        select(WebhookDelivery.id).where(which))).execution_options(synchronize_session=False))
    session.execute(delete(WebhookDelivery).where(which)
                    .execution_options(synchronize_session=False))


def drop_images(sessions: sessionmaker[Session], store: ObjectStore,
                due: Sequence[DueJob]) -> int:
    """The images of ended jobs that do not keep theirs: objects, then the rows' keys,
    each row marked `images_dropped`. The images' descriptions (hash, size, format) stay,
    so the job says what they were. Returns how many objects the marked rows named."""
    if not due:
        return 0
    store.delete_many([key for job in due for key in job.keys])
    several = [job for job in due if job.extra_images]
    with sessions.begin() as session:
        dropped = set(session.scalars(
            update(Job)
            .where(Job.id.in_([job.id for job in due if not job.extra_images]), _ended())
            .values(image_key=None, images_dropped=True)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        ).all())
        for job in several:  # each row's own list, its keys cleared
            dropped.update(session.scalars(
                update(Job).where(Job.id == job.id, _ended())
                .values(image_key=None, extra_images=without_keys(job.extra_images),
                        images_dropped=True)
                .returning(Job.id).execution_options(synchronize_session=False)).all())
    return sum(len(job.keys) for job in due if job.id in dropped)


def delete_job(sessions: sessionmaker[Session], store: ObjectStore, job_id: uuid.UUID,
               tenant_id: str | None) -> None:
    """DELETE /v1/jobs/{id}: an ended job's image, prompt, result and deliveries go; a
    queued or running one is a Conflict (cancel it first). Deleting twice is no error."""
    with sessions() as session:
        query = select(Job.status, Job.image_key, Job.extra_images,
                       Job.purged_at).where(Job.id == job_id)
        if tenant_id is not None:
            query = query.where(Job.tenant_id == tenant_id)
        row = session.execute(query).one_or_none()
    if row is None:
        raise NotFound(f"no job with id {job_id}")
    if row.status not in TERMINAL:
        raise Conflict(f"job {job_id} is {row.status}; cancel it first "
                       f"(POST /v1/jobs/{job_id}/cancel), then delete it",
                       code="job_not_finished")
    if row.purged_at is None:
        remove_jobs(sessions, store, [DueJob(job_id, row.image_key, row.extra_images)])


def gone(kind: str, object_id: object, purged_at: datetime) -> Gone:
    return Gone(f"{kind} {object_id}'s data was removed at {purged_at.isoformat()} "
                "(retention or a deletion); only its id, status and timestamps remain")


# -- batches ------------------------------------------------------------------------------


def strip_batch(session: Session, batch_id: str, now: datetime) -> bool:
    """An ended batch keeps its counts, status and timestamps; its metadata, errors and
    webhook go. Its lines must be stripped already."""
    stripped = session.scalars(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status.in_(sorted(BATCH_TERMINAL)),
               Batch.purged_at.is_(None))
        .values(metadata_=None, errors=None, webhook_url=None, webhook_events=None,
                purged_at=now)
        .returning(Batch.id)
        .execution_options(synchronize_session=False)
    ).all()
    if stripped:
        delete_deliveries(session, WebhookDelivery.batch_id == batch_id)
    return bool(stripped)


# -- files --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DueFile:
    id: str
    object_key: str


def remove_files(sessions: sessionmaker[Session], store: ObjectStore,
                 due: Sequence[DueFile]) -> int:
    """Expired files: their bytes, then `purged_at` on their rows."""
    if not due:
        return 0
    store.delete_many([f.object_key for f in due])
    with sessions.begin() as session:
        return len(session.scalars(
            update(StoredFile)
            .where(StoredFile.id.in_([f.id for f in due]), StoredFile.purged_at.is_(None))
            .values(purged_at=utcnow())
            .returning(StoredFile.id)
            .execution_options(synchronize_session=False)
        ).all())


# -- what is left -------------------------------------------------------------------------


def delete_tombstones(session: Session, before: datetime, limit: int) -> int:
    """Rows stripped before `before` go for good: from then on their ids are not found."""
    removed = 0
    for table in (Job, Batch, StoredFile):
        ids = list(session.scalars(select(table.id).where(table.purged_at < before)
                                   .limit(limit)))
        if not ids:
            continue
        if table is Batch:
            # Its lines and deliveries go with it (the lines are tombstones already).
            delete_deliveries(session, WebhookDelivery.batch_id.in_(ids))
            session.execute(delete(Job).where(Job.batch_id.in_(ids))
                            .execution_options(synchronize_session=False))
        if table is Job:
            delete_deliveries(session, WebhookDelivery.job_id.in_(ids))
        removed += session.execute(delete(table).where(table.id.in_(ids))
                                   .execution_options(synchronize_session=False)).rowcount
    return removed
