"""The webhook delivery ledger as the API shows it: deliveries with their attempts, and
replay."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from shared.errors import NotFound
from shared.jobs import repo as jobs_repo
from shared.models import WebhookAttempt, WebhookDelivery
from shared.webhooks import repo as deliveries_repo
from shared.webhooks.events import DeliveryStatus


@dataclass(frozen=True)
class DeliveryView:
    delivery: WebhookDelivery
    attempts: list[WebhookAttempt]


def for_job(reads: sessionmaker[Session], job_id: uuid.UUID,
            tenant: str | None) -> list[DeliveryView]:
    """The job's deliveries, oldest first; NotFound when the tenant cannot see the job."""
    with reads() as session:
        if jobs_repo.get_job(session, job_id, tenant) is None:
            raise NotFound(f"no job with id {job_id}")
        return _views(session, deliveries_repo.for_job(session, job_id))


def list_deliveries(reads: sessionmaker[Session], status: DeliveryStatus | None, limit: int,
                    cursor: str | None, tenant: str | None) -> tuple[list[DeliveryView],
                                                                    str | None]:
    """A page, newest first, and the cursor to the next one."""
    with reads() as session:
        page = deliveries_repo.list_deliveries(session, status, limit, cursor, tenant)
        return _views(session, page.deliveries), page.next_cursor


def get_delivery(reads: sessionmaker[Session], delivery_id: uuid.UUID,
                 tenant: str | None) -> DeliveryView:
    with reads() as session:
        delivery = deliveries_repo.get_delivery(session, delivery_id, tenant)
        if delivery is None:
            raise NotFound(f"no webhook delivery with id {delivery_id}")
        return _views(session, [delivery])[0]


def redeliver(sessions: sessionmaker[Session], delivery_id: uuid.UUID,
              tenant: str | None) -> DeliveryView:
    """Sends the same event again (same webhook-id, same body) with a fresh retry schedule."""
    with sessions.begin() as session:
        delivery = deliveries_repo.redeliver(session, delivery_id, tenant)
        return _views(session, [delivery])[0]


def _views(session: Session, deliveries: list[WebhookDelivery]) -> list[DeliveryView]:
    attempts = deliveries_repo.attempts_of(session, [d.id for d in deliveries])
    return [DeliveryView(d, attempts[d.id]) for d in deliveries]
