"""One attempt of one webhook delivery: claim, sign, send, record, schedule what is next."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from celery import Celery
from sqlalchemy import Engine as DbEngine
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine, make_session_factory
from shared.jobs import repo as jobs_repo
from shared.net.urls import WebhookUrlRefused, resolve_webhook_url
from shared.queue import make_celery
from shared.settings import Settings
from shared.timeutil import utcnow
from shared.webhooks import repo as deliveries_repo
from shared.webhooks.events import DeliveryStatus
from shared.webhooks.payload import build_payload
from worker.webhooks.metrics import WebhookMetrics
from worker.webhooks.policy import RetryPolicy
from worker.webhooks.sender import AttemptResult, post_webhook
from worker.webhooks.signing import signed_headers

log = logging.getLogger(__name__)


@dataclass
class WebhookContext:
    """What the control process holds for webhooks: no engine, only the database and the
    broker."""

    settings: Settings
    db: DbEngine
    sessions: sessionmaker[Session]
    celery: Celery
    policy: RetryPolicy
    metrics: WebhookMetrics

    @classmethod
    def start(cls, settings: Settings, metrics: WebhookMetrics | None = None) -> WebhookContext:
        db = make_engine(settings)
        return cls(
            settings=settings,
            db=db,
            sessions=make_session_factory(db),
            celery=make_celery(settings),
            policy=RetryPolicy(
                schedule=settings.webhook_retry_schedule,
                jitter=settings.webhook_retry_jitter,
                retry_after_max=settings.webhook_retry_after_max_seconds,
            ),
            metrics=metrics or WebhookMetrics(),
        )

    @property
    def lease_seconds(self) -> float:
        # Covers the request (connect, send, response, each bounded by the timeout) with
        # room to write the ledger; after this another sender may take the delivery over.
        return 2 * self.settings.webhook_timeout_seconds + 5

    def close(self) -> None:
        self.db.dispose()


def deliver(ctx: WebhookContext, delivery_id: uuid.UUID) -> str:
    with ctx.sessions() as session:
        claimed = deliveries_repo.claim(session, delivery_id, ctx.lease_seconds)
        if claimed is None:
            return "not due, finished, or held by another sender"
        # Committed on its own: the lease and the open attempt must stand even if building
        # the payload fails, so the ledger shows the attempt and no other sender races it.
        session.commit()
        payload = claimed.payload
        if payload is None:
            payload = _first_payload(ctx, session, claimed)
            session.commit()
    result = _attempt(ctx, claimed, payload)
    after = ctx.policy.after(
        result.status_code, result.retry_after_seconds, claimed.round_attempts, utcnow()
    )
    record = deliveries_repo.AttemptRecord(
        status_code=result.status_code,
        latency_ms=result.latency_ms,
        error=result.error,
        response_excerpt=result.response_excerpt,
    )
    with ctx.sessions() as session:
        deliveries_repo.finish(session, claimed, record, after.status, after.attempt_at)
        session.commit()
    ctx.metrics.attempts.labels(outcome=str(after.status)).inc()
    ctx.metrics.attempt_time.observe(result.latency_ms / 1000)
    level = logging.WARNING if after.status == DeliveryStatus.dead_lettered else logging.INFO
    log.log(
        level,
        "webhook %s (%s, job %s) attempt %d: %s -> %s%s",
        claimed.message_id, claimed.event, claimed.job_id, claimed.number,
        result.status_code or result.error, after.status,
        f", next at {after.attempt_at:%H:%M:%S}" if after.attempt_at else "",
    )
    return str(after.status)


def _first_payload(ctx: WebhookContext, session: Session, claimed: deliveries_repo.Claim) -> str:
    """Built once from the finished job and stored, so every attempt sends the same bytes."""
    job = jobs_repo.get_job(session, claimed.job_id) if claimed.job_id else None
    if job is None:  # deleted jobs take their deliveries with them; this is a narrow race
        raise LookupError(f"job {claimed.job_id} is gone")
    payload = build_payload(
        job,
        claimed.event,
        public_url=ctx.settings.public_url,
        max_bytes=ctx.settings.webhook_max_payload_bytes,
    )
    deliveries_repo.save_payload(session, claimed.delivery_id, payload)
    return payload


def _attempt(ctx: WebhookContext, claimed: deliveries_repo.Claim, payload: str) -> AttemptResult:
    settings = ctx.settings
    started = time.monotonic()

    def failed(error: str) -> AttemptResult:
        elapsed = int((time.monotonic() - started) * 1000)
        return AttemptResult(None, elapsed, error, None, "")

    try:
        # Resolved again on every attempt: the address checked is the address connected to,
        # so DNS that changed since the submit cannot point the request inside.
        target = resolve_webhook_url(
            claimed.url,
            allow_http=settings.webhook_allow_http,
            allowed_networks=settings.webhook_allowed_networks,
        )
    except WebhookUrlRefused as exc:
        return failed(f"refused before connecting: {exc.message}")
    try:
        headers = signed_headers(settings.webhook_secrets, claimed.message_id, payload, utcnow())
        return post_webhook(
            target,
            payload.encode(),
            headers,
            timeout_seconds=settings.webhook_timeout_seconds,
            max_response_bytes=settings.webhook_max_response_bytes,
        )
    except Exception as exc:  # a failed attempt with backoff, never a crashed sender
        log.exception("webhook %s: attempt failed inside the sender", claimed.message_id)
        return failed(f"internal error: {exc}")
