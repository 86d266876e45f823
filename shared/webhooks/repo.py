"""Repository functions for webhook deliveries and their attempt ledger.

Postgres is the source of truth: a delivery row is written in the same transaction that
finishes its job, and queue messages only tell a sender to look at a row. A lost message,
a killed sender or a broker restart therefore delays an event but never loses it.
Functions here flush and leave the commit to their caller, which owns the transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session

from shared.cursor import newest_first_page
from shared.errors import NotFound
from shared.jobs.status import JobStatus
from shared.models import Batch, Job, WebhookAttempt, WebhookDelivery
from shared.timeutil import utcnow
from shared.webhooks import transitions
from shared.webhooks.events import EVENT_FOR_STATUS, DeliveryStatus


def add_for_terminal_job(
    session: Session,
    job_id: uuid.UUID,
    status: JobStatus,
    url: str,
    events: list[str] | None,
) -> None:
    """Called inside the transaction that moves the job to `status`; commits with it."""
    event = EVENT_FOR_STATUS[status]
    if events is not None and event not in events:
        return
    session.add(_pending(event, url, job_id=job_id))


def add_for_batch(session: Session, batch_id: str, event: str, url: str,
                  events: list[str] | None, payload: str) -> None:
    """Called inside the transaction that ends the batch. The payload is the batch as it
    ended, written now: nothing later could rebuild it."""
    if events is not None and event not in events:
        return
    session.add(_pending(event, url, batch_id=batch_id, payload=payload))


def _pending(event: str, url: str, **owner_and_payload: object) -> WebhookDelivery:
    return transitions.created(event, url, **owner_and_payload)


def _attemptable(now: datetime) -> list[ColumnElement[bool]]:
    """Pending, due, and held by no live sender."""
    return [
        WebhookDelivery.status == DeliveryStatus.pending,
        WebhookDelivery.next_attempt_at <= now,
        or_(WebhookDelivery.lease_expires_at.is_(None), WebhookDelivery.lease_expires_at < now),
    ]


def _due(now: datetime, redispatch_before: datetime) -> list[ColumnElement[bool]]:
    """Attemptable and without a recent queue message for it."""
    return [
        *_attemptable(now),
        or_(
            WebhookDelivery.dispatched_at.is_(None),
            WebhookDelivery.dispatched_at < redispatch_before,
        ),
    ]


def take_due(session: Session, redispatch_after_seconds: float,
             limit: int = 500) -> list[uuid.UUID]:
    """Deliveries whose attempt is due and that no sender holds, stamped as dispatched.

    The stamp is set by one guarded UPDATE, so when several webhook workers look at once
    each delivery is taken by one of them. A stamped delivery whose message went missing is
    taken again after `redispatch_after_seconds`.
    """
    now = utcnow()
    conditions = _due(now, now - timedelta(seconds=redispatch_after_seconds))
    oldest_due = (
        select(WebhookDelivery.id)
        .where(*conditions)
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    )
    taken = session.scalars(
        update(WebhookDelivery)
        # Repeated outside the subquery: a row another worker stamped meanwhile is skipped.
        .where(WebhookDelivery.id.in_(oldest_due), *conditions)
        .values(dispatched_at=now)
        .returning(WebhookDelivery.id)
        .execution_options(synchronize_session=False)
    ).all()
    return list(taken)


def forget_dispatches(session: Session) -> int:
    """Makes every due delivery no sender holds dispatchable again at once.

    A webhook worker calls this when it starts: messages a killed worker had taken from
    the queue but not started are gone with it, and waiting for the re-dispatch period
    would hold those events back. A duplicate message costs one failed claim.
    """
    now = utcnow()
    count = session.execute(
        update(WebhookDelivery)
        .where(*_attemptable(now), WebhookDelivery.dispatched_at.is_not(None))
        .values(dispatched_at=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    return count


@dataclass(frozen=True)
class Claim:
    delivery_id: uuid.UUID
    job_id: uuid.UUID | None  # None for a batch's event, whose payload is written up front
    event: str
    url: str
    message_id: str
    payload: str | None
    number: int  # of this attempt among all the delivery's attempts
    round_attempts: int  # since creation or the last replay, this attempt included
    attempt_id: uuid.UUID


def claim(session: Session, delivery_id: uuid.UUID, lease_seconds: float) -> Claim | None:
    """Takes the delivery for one attempt, or None when it is not due or another sender has it.

    An attempt a dead sender left open is closed as interrupted, so the ledger shows it.
    The caller commits before sending, so the lease holds off other senders meanwhile.
    """
    now = utcnow()
    lease = now + timedelta(seconds=lease_seconds)
    row = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, *_attemptable(now))
        .values(
            lease_expires_at=lease,
            dispatched_at=None,
            attempts=WebhookDelivery.attempts + 1,
            round_attempts=WebhookDelivery.round_attempts + 1,
        )
        .returning(
            WebhookDelivery.job_id,
            WebhookDelivery.event,
            WebhookDelivery.url,
            WebhookDelivery.message_id,
            WebhookDelivery.payload,
            WebhookDelivery.attempts,
            WebhookDelivery.round_attempts,
        )
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        return None
    job_id, event, url, message_id, payload, attempts, round_attempts = row
    session.execute(
        update(WebhookAttempt)
        .where(WebhookAttempt.delivery_id == delivery_id, WebhookAttempt.finished_at.is_(None))
        .values(finished_at=now, error="interrupted: the sender stopped during the attempt")
        .execution_options(synchronize_session=False)
    )
    attempt = WebhookAttempt(delivery_id=delivery_id, number=attempts, started_at=now)
    session.add(attempt)
    session.flush()
    return Claim(delivery_id, job_id, event, url, message_id, payload, attempts, round_attempts,
                 attempt.id)


def save_payload(session: Session, delivery_id: uuid.UUID, payload: str) -> None:
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.payload.is_(None))
        .values(payload=payload)
        .execution_options(synchronize_session=False)
    )


@dataclass(frozen=True)
class AttemptRecord:
    status_code: int | None
    latency_ms: int
    error: str | None
    response_excerpt: str


def finish(
    session: Session,
    claimed: Claim,
    record: AttemptRecord,
    status: DeliveryStatus,
    next_attempt_at: datetime | None,
) -> bool:
    """Writes the attempt to the ledger and moves the delivery on.

    The delivery only moves while this attempt is its latest: if the lease lapsed and
    another sender took over, this attempt is still recorded but the newer one decides.
    """
    now = utcnow()
    session.execute(
        update(WebhookAttempt)
        .where(WebhookAttempt.id == claimed.attempt_id)
        .values(
            finished_at=now,
            status_code=record.status_code,
            latency_ms=record.latency_ms,
            error=record.error,
            response_excerpt=record.response_excerpt,
        )
        .execution_options(synchronize_session=False)
    )
    moved = transitions.settle(
        session, claimed.delivery_id, claimed.number, status, now=now,
        next_attempt_at=next_attempt_at, status_code=record.status_code, error=record.error,
    )
    return moved


def redeliver(
    session: Session, delivery_id: uuid.UUID, tenant_id: str | None = None
) -> WebhookDelivery:
    """Schedules a fresh round of attempts now, whatever state the delivery is in.
    Given `tenant_id`, another tenant's delivery is not found."""
    if get_delivery(session, delivery_id, tenant_id) is None:
        raise NotFound(f"no webhook delivery with id {delivery_id}")
    changed = transitions.redeliver(session, delivery_id)
    if not changed:
        raise NotFound(f"no webhook delivery with id {delivery_id}")
    delivery = session.get(WebhookDelivery, delivery_id, populate_existing=True)
    assert delivery is not None
    return delivery


def get_delivery(
    session: Session, delivery_id: uuid.UUID, tenant_id: str | None = None
) -> WebhookDelivery | None:
    """The delivery; given `tenant_id`, only if its job belongs to that tenant."""
    stmt = select(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
    if tenant_id is not None:
        stmt = stmt.where(_of_tenant(tenant_id))
    return session.scalars(stmt.execution_options(populate_existing=True)).one_or_none()


def _of_tenant(tenant_id: str) -> ColumnElement[bool]:
    # Deliveries belong to a tenant through their job or batch.
    return or_(
        WebhookDelivery.job_id.in_(select(Job.id).where(Job.tenant_id == tenant_id)),
        WebhookDelivery.batch_id.in_(select(Batch.id).where(Batch.tenant_id == tenant_id)),
    )


def for_job(session: Session, job_id: uuid.UUID) -> list[WebhookDelivery]:
    return list(session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.job_id == job_id)
        .order_by(WebhookDelivery.created_at)
    ))


@dataclass(frozen=True)
class DeliveryPage:
    deliveries: list[WebhookDelivery]
    next_cursor: str | None


def list_deliveries(
    session: Session, status: DeliveryStatus | None, limit: int, cursor: str | None,
    tenant_id: str | None = None,
) -> DeliveryPage:
    """Newest first; operators use it to find dead letters."""
    stmt = select(WebhookDelivery)
    if tenant_id is not None:
        stmt = stmt.where(_of_tenant(tenant_id))
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status)
    rows, next_cursor = newest_first_page(session, stmt, WebhookDelivery, limit, cursor)
    return DeliveryPage(rows, next_cursor)


def attempts_of(session: Session, delivery_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[WebhookAttempt]]:
    by_delivery: dict[uuid.UUID, list[WebhookAttempt]] = {d: [] for d in delivery_ids}
    if not delivery_ids:
        return by_delivery
    rows = session.scalars(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id.in_(delivery_ids))
        .order_by(WebhookAttempt.delivery_id, WebhookAttempt.number, WebhookAttempt.started_at)
    )
    for attempt in rows:
        by_delivery[attempt.delivery_id].append(attempt)
    return by_delivery
