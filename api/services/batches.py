"""Batches as the API sees them: create (checks, file lock, insert), read, list and cancel.
The work itself is the control process's (worker/control/batches.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from api.infra.quotas import SubmitLimits
from api.schemas.native import WebhookOptions
from api.schemas.openai import ExpiresAfter
from api.services.files import expires_after_seconds
from api.services.submit import check_webhook
from shared.batches import repo as batches
from shared.batches import transitions as batch_transitions
from shared.batches.repo import Counts
from shared.batches.status import BatchStatus
from shared.errors import Conflict, InvalidInput, NotFound
from shared.models import Batch
from shared.retention.removal import gone
from shared.settings import BatchSettings, WebhookSettings
from shared.tenancy.repo import Authenticated
from shared.timeutil import utcnow

ENDPOINTS = ("/v1/chat/completions",)
_WINDOW = re.compile(r"^(\d{1,6})([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_WINDOW = timedelta(days=7)


@dataclass(frozen=True)
class BatchView:
    """A batch row with its live request counts: what a batch object is built from."""

    batch: Batch
    counts: Counts


@dataclass(frozen=True)
class NewBatch:
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None = None
    webhook_url: str | None = None
    webhook_events: list[str] | None = None
    output_expires_after: ExpiresAfter | None = None


def create_batch(sessions: sessionmaker[Session], limits: SubmitLimits, auth: Authenticated,
                 new: NewBatch, *, webhooks: WebhookSettings,
                 batch_settings: BatchSettings) -> BatchView:
    """Admits and checks the batch, then inserts it `validating`; the control process picks
    it up from there."""
    limits.admit_batch(auth)  # the rate and the tenant's batch caps (api/infra/quotas.py)
    if new.endpoint not in ENDPOINTS:
        raise InvalidInput(f"endpoint must be one of {', '.join(ENDPOINTS)}",
                           code="invalid_endpoint")
    window = _window(new.completion_window)
    output_expiry = None if new.output_expires_after is None else expires_after_seconds(
        "output_expires_after", new.output_expires_after.anchor,
        new.output_expires_after.seconds)
    check_webhook(webhooks, WebhookOptions(webhook_url=new.webhook_url))
    tenant = auth.principal.tenant_id
    with sessions.begin() as session:
        # Shared row lock: a DELETE of the file waits for this batch, then refuses.
        file = batches.get_file(session, new.input_file_id, tenant, lock="share")
        if file is None:
            raise NotFound(f"no file with id {new.input_file_id}")
        if file.purged_at is not None:  # its lines are gone: there is nothing to run
            raise gone("input file", file.id, file.purged_at)
        if file.purpose != "batch":
            raise InvalidInput("the input file's purpose must be batch", code="invalid_file")
        batch = batches.add_batch(
            session, tenant_id=tenant, endpoint=new.endpoint, input_file_id=file.id,
            completion_window=window, window_text=new.completion_window,
            priority=batch_settings.batch_priority, metadata=new.metadata,
            webhook_url=new.webhook_url, webhook_events=new.webhook_events,
            output_expires_after_seconds=output_expiry,
        )
        return _view(session, batch)


def read_batch(reads: sessionmaker[Session], batch_id: str, tenant: str | None) -> BatchView:
    with reads() as session:
        return _view(session, _batch(session, batch_id, tenant))


def list_batches(reads: sessionmaker[Session], tenant: str | None, limit: int,
                 after: str | None) -> tuple[list[BatchView], bool]:
    """A page, newest first, and whether more follow."""
    with reads() as session:
        rows, more = batches.list_batches(session, tenant, limit, after)
        counts = batches.counts(session, rows)
    return [BatchView(b, counts[b.id]) for b in rows], more


def cancel_batch(sessions: sessionmaker[Session], batch_id: str,
                 tenant: str | None) -> BatchView:
    """validating or in_progress -> cancelling; a batch already cancelling or cancelled is
    answered as it is, one that ended otherwise is a Conflict."""
    with sessions() as session:
        with session.begin():
            batch = _batch(session, batch_id, tenant)
            moved = batch_transitions.cancel(session, batch.id, now=utcnow())
        # The cancel commits on its own, before the re-read: the answer (and the 409 below)
        # then comes from a fresh transaction that also sees a move another process made
        # meanwhile, and raising the 409 can never roll a cancel back.
        batch = _batch(session, batch_id, tenant)
        if not moved and batch.status not in (BatchStatus.cancelling, BatchStatus.cancelled):
            raise Conflict(f"batch {batch_id} is already {batch.status}", code="batch_finished")
        return _view(session, batch)


def _batch(session: Session, batch_id: str, tenant: str | None) -> Batch:
    """The batch; 410 once retention purged it, checked after the tenant so that another
    tenant's purged batch stays a 404."""
    batch = batches.get_batch(session, batch_id, tenant)
    if batch is None:
        raise NotFound(f"no batch with id {batch_id}")
    if batch.purged_at is not None:
        raise gone("batch", batch.id, batch.purged_at)
    return batch


def _view(session: Session, batch: Batch) -> BatchView:
    return BatchView(batch, batches.counts(session, [batch])[batch.id])


def _window(text: str) -> timedelta:
    match = _WINDOW.match(text)
    window = (timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
              if match else None)
    if window is None or not timedelta(seconds=1) <= window <= _MAX_WINDOW:
        raise InvalidInput("completion_window is a duration such as 24h, 30m or 90s, at most 7d",
                           code="invalid_completion_window")
    return window
