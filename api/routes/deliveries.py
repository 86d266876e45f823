"""Webhook delivery ledger: what was sent where, every attempt, and replay."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from api.auth import authenticate
from api.deps import ApiDeps, get_deps
from api.errors import documented
from api.schemas.native import DeliveryList, DeliveryOut
from api.services import deliveries as service
from api.services.deliveries import DeliveryView
from shared.tenancy.repo import Authenticated
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
    views = service.for_job(deps.reads, job_id, auth.principal.tenant_filter())
    return DeliveryList(data=[_out(v) for v in views])


@router.get("/v1/deliveries", response_model=DeliveryList, responses=documented(400))
def list_deliveries(
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
    status: DeliveryStatus | None = None,
    tenant: Annotated[str | None, Query(description=_TENANT_FILTER)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> DeliveryList:
    views, next_cursor = service.list_deliveries(deps.reads, status, limit, cursor,
                                                 auth.principal.tenant_filter(tenant))
    return DeliveryList(data=[_out(v) for v in views], next_cursor=next_cursor)


@router.get("/v1/deliveries/{delivery_id}", response_model=DeliveryOut,
            responses=documented(404))
def read_delivery(
    delivery_id: uuid.UUID,
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
) -> DeliveryOut:
    return _out(service.get_delivery(deps.reads, delivery_id, auth.principal.tenant_filter()))


@router.post("/v1/deliveries/{delivery_id}/redeliver", status_code=202,
             response_model=DeliveryOut, responses=documented(404))
def redeliver(
    delivery_id: uuid.UUID,
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
) -> DeliveryOut:
    """Sends the same event again (same webhook-id, same body) with a fresh retry schedule."""
    return _out(service.redeliver(deps.sessions, delivery_id, auth.principal.tenant_filter()))


def _out(view: DeliveryView) -> DeliveryOut:
    return DeliveryOut.from_row(view.delivery, view.attempts)
