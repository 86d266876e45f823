"""/v1/batches: OpenAI's Batch API on vlmq's queue. The API creates, reads and cancels
batches; the work is the control process's (worker/control/batches.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from api.auth import authenticate
from api.deps import ApiDeps, get_deps
from api.errors import RATE_LIMITED, documented
from api.schemas.openai import BatchCreate, BatchList, BatchObject
from api.services import batches as service
from api.services.batches import BatchView, NewBatch
from shared.tenancy.repo import Authenticated

router = APIRouter(prefix="/v1/batches", tags=["batches"])


@router.post("", response_model=BatchObject,
             responses={**documented(400, 404, 410, 422), **RATE_LIMITED})
def create_batch(
    body: BatchCreate,
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
) -> BatchObject:
    new = NewBatch(
        endpoint=body.endpoint, input_file_id=body.input_file_id,
        completion_window=body.completion_window, metadata=body.metadata,
        webhook_url=body.webhook_url,
        webhook_events=[str(e) for e in body.webhook_events] if body.webhook_events else None,
        output_expires_after=body.output_expires_after,
    )
    return _out(service.create_batch(deps.sessions, deps.limits, auth, new,
                                     webhooks=deps.settings, batch_settings=deps.settings))


@router.get("/{batch_id}", response_model=BatchObject, responses=documented(404, 410))
def read_batch(
    batch_id: str,
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
) -> BatchObject:
    return _out(service.read_batch(deps.reads, batch_id, auth.principal.tenant_filter()))


@router.get("", response_model=BatchList)
def list_batches(
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=40)] = None,
) -> BatchList:
    views, more = service.list_batches(deps.reads, auth.principal.tenant_filter(), limit, after)
    data = [_out(v) for v in views]
    return BatchList(data=data, first_id=data[0].id if data else None,
                     last_id=data[-1].id if data else None, has_more=more)


@router.post("/{batch_id}/cancel", response_model=BatchObject,
             responses=documented(404, 409, 410))
def cancel_batch(
    batch_id: str,
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
) -> BatchObject:
    """The batch becomes cancelling; the control process then ends its queued and running
    lines as cancelled (running ones are aborted in the engine) and writes the output."""
    return _out(service.cancel_batch(deps.sessions, batch_id, auth.principal.tenant_filter()))


def _out(view: BatchView) -> BatchObject:
    return BatchObject.from_row(view.batch, view.counts)
