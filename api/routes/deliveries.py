"""Webhook delivery ledger: what was sent where, every attempt, and replay."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy.orm import Session

from api.auth import authenticate
from api.deps import ApiDeps, get_deps
from api.errors import documented
from api.schemas.native import DeliveryList, DeliveryOut
from shared.errors import NotFound
from shared.jobs import repo as jobs_repo
from shared.models import WebhookDelivery
from shared.tenancy.repo import Authenticated
from shared.webhooks import repo as deliveries_repo
from shared.webhooks.events import DeliveryStatus

router = APIRouter(tags=["webhooks"])

_TENANT_FILTER = "admin keys only: one tenant's deliveries (default: every tenant's)"


@router.get("/v1/jobs/{job_id}/deliveries", response_model=DeliveryList,
            responses=documented(404))
def job_deliveries(
    job_id: uuid.UUID,
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
) -> DeliveryList:
    with deps.sessions() as session:
        if jobs_repo.get_job(session, job_id, auth.principal.tenant_filter()) is None:
            raise NotFound(f"no job with id {job_id}")
        return DeliveryList(data=_out(session, deliveries_repo.for_job(session, job_id)))


@router.get("/v1/deliveries", response_model=DeliveryList, responses=documented(400))
def list_deliveries(
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
    status: DeliveryStatus | None = None,
    tenant: Annotated[str | None, Query(description=_TENANT_FILTER)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> DeliveryList:
    with deps.sessions() as session:
        page = deliveries_repo.list_deliveries(
            session, status, limit, cursor, auth.principal.tenant_filter(tenant)
        )
        return DeliveryList(data=_out(session, page.deliveries), next_cursor=page.next_cursor)


@router.get("/v1/deliveries/{delivery_id}", response_model=DeliveryOut,
            responses=documented(404))
def read_delivery(
    delivery_id: uuid.UUID,
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
) -> DeliveryOut:
    with deps.sessions() as session:
        delivery = deliveries_repo.get_delivery(
            session, delivery_id, auth.principal.tenant_filter()
        )
        if delivery is None:
            raise NotFound(f"no webhook delivery with id {delivery_id}")
        return _out(session, [delivery])[0]


@router.post("/v1/deliveries/{delivery_id}/redeliver", status_code=202,
             response_model=DeliveryOut, responses=documented(404))
def redeliver(
    delivery_id: uuid.UUID,
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
) -> DeliveryOut:
    """Sends the same event again (same webhook-id, same body) with a fresh retry schedule."""
    with deps.sessions() as session:
        delivery = deliveries_repo.redeliver(session, delivery_id, auth.principal.tenant_filter())
        session.commit()
        return _out(session, [delivery])[0]


def _out(session: Session, deliveries: list[WebhookDelivery]) -> list[DeliveryOut]:
    attempts = deliveries_repo.attempts_of(session, [d.id for d in deliveries])
    return [DeliveryOut.from_row(d, attempts[d.id]) for d in deliveries]
