"""Every write of a webhook delivery's status, one named verb each.

Each verb is one guarded UPDATE naming the source states VERBS gives it (a subset of the
table in status.py). An attempt's outcome is also fenced by the attempt's number: if the
sender's lease lapsed and another sender took over, only the newer attempt decides.
Verbs flush and leave the commit to their caller.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from shared.models import WebhookDelivery
from shared.timeutil import utcnow
from shared.webhooks.status import ALLOWED_FROM, CREATED_AS, DeliveryStatus

P = DeliveryStatus.pending


@dataclass(frozen=True)
class Move:
    sources: frozenset[DeliveryStatus]
    target: DeliveryStatus


# verb -> the states it may leave and the one it enters.
VERBS: dict[str, Move] = {
    "retry_later": Move(frozenset({P}), P),
    "succeed": Move(frozenset({P}), DeliveryStatus.succeeded),
    "disable": Move(frozenset({P}), DeliveryStatus.disabled),
    "dead_letter": Move(frozenset({P}), DeliveryStatus.dead_lettered),
    "redeliver": Move(frozenset(DeliveryStatus), P),
}
for _verb, _move in VERBS.items():
    assert _move.sources <= ALLOWED_FROM[_move.target], f"{_verb} leaves the table"


def created(event: str, url: str, **owner_and_payload: Any) -> WebhookDelivery:
    """A new delivery, pending and due now; the webhook-id is minted here and never
    changes."""
    delivery = WebhookDelivery(
        event=event,
        url=url,
        message_id=f"msg_{uuid.uuid4().hex}",
        status=DeliveryStatus.pending,
        attempts=0,
        round_attempts=0,
        next_attempt_at=utcnow(),
        **owner_and_payload,
    )
    assert delivery.status in CREATED_AS
    return delivery


def _move(session: Session, verb: str, delivery_id: uuid.UUID, attempt: int | None,
          **values: Any) -> bool:
    sources = VERBS[verb].sources
    conditions = [WebhookDelivery.id == delivery_id]
    if sources != frozenset(DeliveryStatus):
        conditions.append(WebhookDelivery.status.in_(sorted(sources)) if len(sources) > 1
                          else WebhookDelivery.status == next(iter(sources)))
    if attempt is not None:
        conditions.append(WebhookDelivery.attempts == attempt)
    return session.execute(
        update(WebhookDelivery)
        .where(*conditions)
        .values(status=VERBS[verb].target, **values)
        .execution_options(synchronize_session=False)
    ).rowcount == 1


def _settle(session: Session, verb: str, delivery_id: uuid.UUID, attempt: int, *,
            status_code: int | None, error: str | None,
            next_attempt_at: datetime | None = None, delivered_at: datetime | None = None
            ) -> bool:
    return _move(session, verb, delivery_id, attempt, next_attempt_at=next_attempt_at,
                 lease_expires_at=None, delivered_at=delivered_at,
                 last_status_code=status_code, last_error=error)


def retry_later(session: Session, delivery_id: uuid.UUID, attempt: int, *,
                next_attempt_at: datetime, status_code: int | None,
                error: str | None) -> bool:
    """pending -> pending: attempt `attempt` failed and the next is due at
    `next_attempt_at`."""
    return _settle(session, "retry_later", delivery_id, attempt, status_code=status_code,
                   error=error, next_attempt_at=next_attempt_at)


def succeed(session: Session, delivery_id: uuid.UUID, attempt: int, *, now: datetime,
            status_code: int | None, error: str | None = None) -> bool:
    """pending -> succeeded: the endpoint took attempt `attempt`."""
    return _settle(session, "succeed", delivery_id, attempt, status_code=status_code,
                   error=error, delivered_at=now)


def disable(session: Session, delivery_id: uuid.UUID, attempt: int, *,
            status_code: int | None, error: str | None) -> bool:
    """pending -> disabled: the endpoint answered 410 Gone to attempt `attempt`."""
    return _settle(session, "disable", delivery_id, attempt, status_code=status_code,
                   error=error)


def dead_letter(session: Session, delivery_id: uuid.UUID, attempt: int, *,
                status_code: int | None, error: str | None) -> bool:
    """pending -> dead_lettered: attempt `attempt` was the round's last, and it failed."""
    return _settle(session, "dead_letter", delivery_id, attempt, status_code=status_code,
                   error=error)


def redeliver(session: Session, delivery_id: uuid.UUID) -> bool:
    """Any state -> pending: a fresh round of attempts, due now (an operator's replay)."""
    return _move(session, "redeliver", delivery_id, None, next_attempt_at=utcnow(),
                 round_attempts=0, dispatched_at=None)


def settle(session: Session, delivery_id: uuid.UUID, attempt: int, target: DeliveryStatus,
           *, now: datetime, next_attempt_at: datetime | None, status_code: int | None,
           error: str | None) -> bool:
    """The verb for an attempt's outcome as the retry policy decided it (`target`)."""
    if target == DeliveryStatus.succeeded:
        return succeed(session, delivery_id, attempt, now=now, status_code=status_code,
                       error=error)
    if target == DeliveryStatus.disabled:
        return disable(session, delivery_id, attempt, status_code=status_code, error=error)
    if target == DeliveryStatus.dead_lettered:
        return dead_letter(session, delivery_id, attempt, status_code=status_code, error=error)
    assert next_attempt_at is not None, "a pending delivery needs its next attempt's time"
    return retry_later(session, delivery_id, attempt, next_attempt_at=next_attempt_at,
                       status_code=status_code, error=error)
