"""Accepting a job: validate and store the image (shared/jobs/intake.py, the checks a batch
line passes too), insert the row, wake a worker; in that order.

The order means a queued job always has its image. Once the row is committed the job is
accepted: workers claim queued jobs from Postgres and poll it on their own, so the broker
message after the commit is only a wake-up, sent in the background (shared/wakeups.py).
Without an Idempotency-Key the happy path is one decode of the image, one object put and
one autocommitted INSERT (which counts the job in the usage ledger too). A tenant near its
active-jobs quota has its insert counted under a per-tenant advisory lock instead
(api/infra/quotas.py), so no race takes it past the quota.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from api.deps import ApiDeps
from api.infra.quotas import Reservation
from api.schemas.native import GenerationParams, JobOptions, WebhookOptions
from shared.db import is_sqlite
from shared.errors import Conflict, InvalidInput, RateLimited, Unavailable
from shared.jobs import repo as jobs_repo
from shared.jobs import transitions as jobs_transitions
from shared.jobs.images import stored_keys
from shared.jobs.intake import CheckedImage, ImageInput
from shared.jobs.status import JobStatus
from shared.models import Job
from shared.net.urls import resolve_webhook_url
from shared.retention.policy import keeps_images
from shared.settings import WebhookSettings
from shared.tenancy.principal import DEFAULT_TENANT
from shared.timeutil import utcnow
from shared.usage import ledger as usage_ledger

log = logging.getLogger(__name__)

# The first key of the quota's advisory locks (pg_advisory_xact_lock(int4, int4)): the
# second is the tenant's hash, so two tenants' locks collide only by chance, and then they
# merely wait for each other.
_QUOTA_LOCK_SPACE = 0x766C6D71  # "vlmq"


@dataclass(frozen=True)
class Submission:
    image: bytes | None  # an upload; or None with image_url set
    prompt: str | None
    model: str | None
    params: GenerationParams
    options: JobOptions = field(default_factory=JobOptions)
    webhook: WebhookOptions = field(default_factory=WebhookOptions)
    idempotency_key: str | None = None
    tenant_id: str = DEFAULT_TENANT
    # data: (decoded and stored like an upload), https:// or s3:// (fetched by the worker)
    image_url: str | None = None
    # The tenant's own keep_images (None: the server's), for a job that does not say.
    tenant_keep_images: bool | None = None
    # Every image in prompt order, for a job of several (`images: [...]`, repeated `image`
    # parts, image_url parts); empty: the one of `image` / `image_url`.
    images: tuple[ImageInput, ...] = ()

    def given_images(self) -> tuple[ImageInput, ...]:
        return self.images or ((self.image, self.image_url),)


@dataclass(frozen=True)
class Accepted:
    job: Job
    replayed: bool  # True when an earlier submission with the same Idempotency-Key is returned


def submit_job(deps: ApiDeps, sub: Submission) -> Accepted:
    settings = deps.settings
    intake = deps.intake
    prompt, model, params = intake.check_fields(sub.prompt, sub.model, sub.params,
                                                len(sub.given_images()))
    check_webhook(settings, sub.webhook)
    images = intake.check_images(sub.given_images(), sub.tenant_id)
    fingerprint = None
    if sub.idempotency_key is not None:
        fingerprint = _fingerprint(images, prompt, model, params, sub.options, sub.webhook)
        earlier = _replay(deps, sub.tenant_id, sub.idempotency_key, fingerprint)
        if earlier is not None:
            return Accepted(earlier, replayed=True)
    job_id = uuid.uuid4()
    columns = intake.store_images(job_id, images)
    now = utcnow()
    row: dict[str, Any] = jobs_transitions.created(
        id=job_id,
        tenant_id=sub.tenant_id,
        model=model,
        prompt=prompt,
        params=params,
        **columns,
        attempts=0,
        engine_failures=0,
        priority=sub.options.priority,
        created_at=now,
        runnable_at=now,
        expires_at=_deadline(now, sub.options.max_queue_seconds or settings.max_queue_seconds),
        idempotency_key=sub.idempotency_key,
        request_sha256=fingerprint,
        keep_image=_keep_image(sub, settings.keep_images),
        webhook_url=sub.webhook.webhook_url,
        webhook_events=(
            [str(e) for e in sub.webhook.webhook_events] if sub.webhook.webhook_events else None
        ),
    )
    try:
        with deps.limits.reserve(sub.tenant_id) as reservation:
            _insert_row(deps, row, reservation)
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key inserted first.
        earlier = _replay(deps, sub.tenant_id, sub.idempotency_key or "", fingerprint or "")
        if earlier is None:
            raise Unavailable("the database did not take the job; retry shortly") from None
        return Accepted(earlier, replayed=True)
    # Committed: the job is accepted whatever becomes of its wake-up (see shared/wakeups.py).
    deps.wakeups.job_accepted(job_id, model, sub.options.priority)
    return Accepted(Job(**row), replayed=False)


def _fingerprint(
    images: list[CheckedImage],
    prompt: str,
    model: str,
    params: dict[str, object],
    options: JobOptions,
    webhook: WebhookOptions,
) -> str:
    # One image is fingerprinted as it always was, so a retry across an upgrade replays.
    identity: str | list[str] = (images[0].identity if len(images) == 1
                                 else [i.identity for i in images])
    body = {"image": identity, "prompt": prompt, "model": model, "params": params,
            "options": options.model_dump(), "webhook": webhook.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _replay(deps: ApiDeps, tenant_id: str, key: str, fingerprint: str) -> Job | None:
    with deps.reads() as session:
        earlier = jobs_repo.find_by_idempotency_key(session, tenant_id, key)
    if earlier is None:
        return None
    if earlier.request_sha256 != fingerprint:
        raise Conflict(
            "this Idempotency-Key was used with a different request; use a new key for a new job",
            code="idempotency_key_reused",
        )
    return earlier


def _keep_image(sub: Submission, default: bool) -> bool:
    return keeps_images(sub.options.keep_image, keeps_images(sub.tenant_keep_images, default))


def _deadline(now: datetime, seconds: int | None) -> datetime | None:
    return now + timedelta(seconds=seconds) if seconds else None


def check_webhook(webhook_settings: WebhookSettings, webhook: WebhookOptions) -> None:
    """Refuses, before anything is stored, a URL the sender would refuse to connect to."""
    if webhook.webhook_url is None:
        return
    if not webhook_settings.webhook_secrets:
        raise InvalidInput(
            "this server has no webhook signing secret, so it cannot send webhooks; poll "
            "GET /v1/jobs/{id} or ask the operator to set VLMQ_WEBHOOK_SECRETS",
            code="webhooks_not_configured",
        )
    resolve_webhook_url(
        webhook.webhook_url,
        allow_http=webhook_settings.webhook_allow_http,
        allowed_networks=webhook_settings.webhook_allowed_networks,
    )


def _insert_row(deps: ApiDeps, row: dict[str, Any], reservation: Reservation) -> None:
    """One autocommitted statement, the INSERT with its count in the usage ledger: a single
    round trip, and the job exists once it returns. Near the tenant's quota, a transaction
    that counts under the tenant's lock first. SQLite counts the job in a statement of its
    own, so there the two share a transaction."""
    # None for images given by reference: nothing to clean up.
    keys = stored_keys(row.get("image_key"), row.get("extra_images"))
    exact = reservation.limit is not None
    transaction = exact or is_sqlite(deps.settings)
    try:
        conn = (deps.engine if transaction else deps.autocommit).connect()
    except Exception as exc:  # nothing was sent, so the image has no job
        deps.intake.delete_quietly(keys)
        raise Unavailable("the database is unreachable; retry shortly") from exc
    with conn:
        try:
            if exact:
                _insert_counted(deps, conn, row, reservation)
            elif transaction:
                with conn.begin():
                    usage_ledger.insert_job(conn, row)
            else:
                usage_ledger.insert_job(conn, row)
        except (IntegrityError, RateLimited):
            deps.intake.delete_quietly(keys)
            raise
        except Exception as exc:
            # The INSERT may have committed before the connection broke: keep the image
            # (a stray object at worst), as a job may point at it.
            log.warning("inserting job %s failed (%s)", row["id"], exc.__class__.__name__)
            raise Unavailable("the database did not take the job; retry shortly") from exc


def _insert_counted(deps: ApiDeps, conn: Connection, row: dict[str, Any],
                    reservation: Reservation) -> None:
    """Counts the tenant's active jobs and inserts this one in one transaction, holding the
    tenant's advisory lock until it commits: the count and the insert of every other API
    process wait for it, so together they never exceed the limit. RateLimited at it.

    The count is its own statement after the lock: in READ COMMITTED each statement sees
    what was committed when it began, so a count in the locking statement could miss the
    insert of the transaction it waited for.
    """
    tenant, limit = row["tenant_id"], reservation.limit
    assert limit is not None
    with conn.begin():
        if not is_sqlite(deps.settings):  # SQLite: one process, serialised by reserve()
            conn.execute(select(func.pg_advisory_xact_lock(
                _QUOTA_LOCK_SPACE, func.hashtext(tenant))))
        counted = conn.execute(
            select(func.count()).select_from(Job).where(
                Job.tenant_id == tenant,
                Job.status.in_((JobStatus.queued, JobStatus.running)),
                Job.batch_id.is_(None),
            )
        ).scalar_one()
        reservation.counted = counted
        if counted >= limit:
            deps.metrics.refused.labels(tenant, "quota_exceeded").inc()
            raise deps.limits.quota_refusal(tenant, limit)
        usage_ledger.insert_job(conn, row)
