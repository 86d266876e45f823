"""/v1/batches: OpenAI's Batch API on vlmq's queue. The API creates, reads and cancels
batches; the work is the control process's (worker/control/batches.py)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy.orm import Session

from api.auth import authenticate
from api.deps import ApiDeps, get_deps
from api.errors import RATE_LIMITED, documented
from api.schemas.native import WebhookOptions
from api.schemas.openai import BatchCreate, BatchList, BatchObject
from api.submit import check_webhook
from shared.batches import repo as batches
from shared.batches import transitions as batch_transitions
from shared.batches.status import BatchStatus
from shared.errors import Conflict, InvalidInput, NotFound
from shared.models import Batch
from shared.tenancy.repo import Authenticated
from shared.timeutil import utcnow

router = APIRouter(prefix="/v1/batches", tags=["batches"])

ENDPOINTS = ("/v1/chat/completions",)
_WINDOW = re.compile(r"^(\d{1,6})([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_WINDOW = timedelta(days=7)


@router.post("", response_model=BatchObject,
             responses={**documented(400, 404, 422), **RATE_LIMITED})
def create_batch(
    body: BatchCreate,
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
) -> BatchObject:
    deps.limits.admit_batch(auth)  # the rate and the tenant's batch caps (api/quotas.py)
    if body.endpoint not in ENDPOINTS:
        raise InvalidInput(f"endpoint must be one of {', '.join(ENDPOINTS)}",
                           code="invalid_endpoint")
    window = _window(body.completion_window)
    check_webhook(deps.settings, WebhookOptions(webhook_url=body.webhook_url))
    tenant = auth.principal.tenant_id
    with deps.sessions() as session:
        # Shared row lock: a DELETE of the file waits for this batch, then refuses.
        file = batches.get_file(session, body.input_file_id, tenant, lock="share")
        if file is None:
            raise NotFound(f"no file with id {body.input_file_id}")
        if file.purpose != "batch":
            raise InvalidInput("the input file's purpose must be batch", code="invalid_file")
        batch = batches.add_batch(
            session, tenant_id=tenant, endpoint=body.endpoint, input_file_id=file.id,
            completion_window=window, window_text=body.completion_window,
            priority=deps.settings.batch_priority, metadata=body.metadata,
            webhook_url=body.webhook_url,
            webhook_events=[str(e) for e in body.webhook_events] if body.webhook_events else None,
        )
        session.commit()
        return _out(session, batch)


@router.get("/{batch_id}", response_model=BatchObject, responses=documented(404))
def read_batch(
    batch_id: str,
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
) -> BatchObject:
    with deps.reads() as session:
        return _out(session, _batch(session, batch_id, auth))


@router.get("", response_model=BatchList)
def list_batches(
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=40)] = None,
) -> BatchList:
    with deps.reads() as session:
        rows, more = batches.list_batches(session, auth.principal.tenant_filter(), limit, after)
        counts = batches.counts(session, rows)
        data = [BatchObject.from_row(b, counts[b.id]) for b in rows]
    return BatchList(data=data, first_id=data[0].id if data else None,
                     last_id=data[-1].id if data else None, has_more=more)


@router.post("/{batch_id}/cancel", response_model=BatchObject, responses=documented(404, 409))
def cancel_batch(
    batch_id: str,
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
) -> BatchObject:
    """The batch becomes cancelling; the control process then ends its queued and running
    lines as cancelled (running ones are aborted in the engine) and writes the output."""
    with deps.sessions() as session:
        batch = _batch(session, batch_id, auth)
        moved = batch_transitions.cancel(session, batch.id, now=utcnow())
        session.commit()
        batch = _batch(session, batch_id, auth)
        if not moved and batch.status not in (BatchStatus.cancelling, BatchStatus.cancelled):
            raise Conflict(f"batch {batch_id} is already {batch.status}", code="batch_finished")
        return _out(session, batch)


def _batch(session: Session, batch_id: str, auth: Authenticated) -> Batch:
    batch = batches.get_batch(session, batch_id, auth.principal.tenant_filter())
    if batch is None:
        raise NotFound(f"no batch with id {batch_id}")
    return batch


def _out(session: Session, batch: Batch) -> BatchObject:
    return BatchObject.from_row(batch, batches.counts(session, [batch])[batch.id])


def _window(text: str) -> timedelta:
    match = _WINDOW.match(text)
    window = (timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
              if match else None)
    if window is None or not timedelta(seconds=1) <= window <= _MAX_WINDOW:
        raise InvalidInput("completion_window is a duration such as 24h, 30m or 90s, at most 7d",
                           code="invalid_completion_window")
    return window
