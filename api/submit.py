"""Accepting a job: validate, store the image, insert the row, wake a worker; in that order.

The order means a queued job always has its image. Once the row is committed the job is
accepted: workers claim queued jobs from Postgres and poll it on their own, so the broker
message after the commit is only a wake-up, sent in the background (api/wakeups.py).
Without an Idempotency-Key the happy path is one decode of the image, one object put and
one autocommitted INSERT. A tenant near its active-jobs quota has its insert counted under
a per-tenant advisory lock instead (api/quotas.py), so no race takes it past the quota.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from api.deps import ApiDeps
from api.errors import unreachable
from api.quotas import Reservation
from api.schemas import GenerationParams, JobOptions, WebhookOptions
from shared import workers_repo
from shared.chat import decode_data_url
from shared.db import is_sqlite
from shared.errors import Conflict, InvalidInput, RateLimited, Unavailable, quoted
from shared.image_refs import check_image_url, check_tenant_image_url
from shared.images import ImageInfo, inspect_image
from shared.jobs import repo as jobs_repo
from shared.jobs.status import JobStatus
from shared.models import Job
from shared.settings import Settings
from shared.tenancy.principal import DEFAULT_TENANT
from shared.timeutil import utcnow
from shared.webhooks.urls import resolve_webhook_url

log = logging.getLogger(__name__)

_INSERT_JOB = insert(Job)
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


@dataclass(frozen=True)
class CheckedImage:
    """An image that passed the upload checks (data + info), or a reference (url)."""

    data: bytes | None = None
    info: ImageInfo | None = None
    url: str | None = None

    @property
    def identity(self) -> str:
        return self.info.sha256 if self.info is not None else self.url or ""


@dataclass(frozen=True)
class Accepted:
    job: Job
    replayed: bool  # True when an earlier submission with the same Idempotency-Key is returned


def submit_job(deps: ApiDeps, sub: Submission) -> Accepted:
    settings = deps.settings
    prompt, model, params = check_fields(deps, sub.prompt, sub.model, sub.params)
    check_webhook(settings, sub.webhook)
    image = check_image(deps, sub.image, sub.image_url, sub.tenant_id)
    fingerprint = None
    if sub.idempotency_key is not None:
        fingerprint = _fingerprint(image, prompt, model, params, sub.options, sub.webhook)
        earlier = _replay(deps, sub.tenant_id, sub.idempotency_key, fingerprint)
        if earlier is not None:
            return Accepted(earlier, replayed=True)
    job_id = uuid.uuid4()
    columns = store_image(deps, job_id, image)
    now = utcnow()
    row: dict[str, Any] = dict(
        id=job_id,
        tenant_id=sub.tenant_id,
        status=JobStatus.queued,
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
    # Committed: the job is accepted whatever becomes of its wake-up (see api/wakeups.py).
    deps.wakeups.job_accepted(job_id, model, sub.options.priority)
    return Accepted(Job(**row), replayed=False)


def check_fields(
    deps: ApiDeps, prompt: str | None, model: str | None, params: GenerationParams
) -> tuple[str, str, dict[str, object]]:
    """The prompt, model and resolved generation parameters, or InvalidInput."""
    settings = deps.settings
    return (
        _check_prompt(prompt, settings.max_prompt_chars),
        _check_model(deps, model or settings.model),
        _resolve_params(params, settings.default_max_tokens, settings.max_tokens_limit),
    )


def check_image(deps: ApiDeps, data: bytes | None, url: str | None,
                tenant_id: str) -> CheckedImage:
    """Upload checks for bytes and data: URLs; the static checks for a reference, which
    for s3:// include the prefixes `tenant_id` may name (shared/image_refs.py)."""
    settings = deps.settings
    if url is not None and not url.startswith("data:"):
        if settings.auth_disabled:  # development: one tenant, the server's bound alone
            check_image_url(url, settings)
        elif url[:5].lower() == "s3://":  # only these need the tenant's prefixes
            check_tenant_image_url(url, settings, deps.limits.image_prefixes(tenant_id))
        else:
            check_image_url(url, settings)
        return CheckedImage(url=url)
    if url is not None:
        data = decode_data_url(url)
    if data is None:
        raise InvalidInput("an image is required", code="missing_image")
    info = inspect_image(
        data,
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_image_pixels,
        max_side=settings.max_image_side,
        allowed_formats=settings.allowed_formats,
        reserve=deps.image_memory.reserve,
    )
    return CheckedImage(data=data, info=info)


def store_image(deps: ApiDeps, job_id: uuid.UUID, image: CheckedImage) -> dict[str, Any]:
    """Puts an uploaded image in the store; the job columns that describe the image."""
    if image.info is None or image.data is None:
        return {"image_url": image.url}
    key = f"images/{job_id}"
    _store_image(deps, key, image.data, image.info)
    info = image.info
    return dict(image_key=key, image_sha256=info.sha256, image_bytes=info.size,
                image_format=info.format, image_width=info.width, image_height=info.height)


def _fingerprint(
    image: CheckedImage,
    prompt: str,
    model: str,
    params: dict[str, object],
    options: JobOptions,
    webhook: WebhookOptions,
) -> str:
    body = {"image": image.identity, "prompt": prompt, "model": model, "params": params,
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


def _deadline(now: datetime, seconds: int | None) -> datetime | None:
    return now + timedelta(seconds=seconds) if seconds else None


def check_webhook(settings: Settings, webhook: WebhookOptions) -> None:
    """Refuses, before anything is stored, a URL the sender would refuse to connect to."""
    if webhook.webhook_url is None:
        return
    if not settings.webhook_secrets:
        raise InvalidInput(
            "this server has no webhook signing secret, so it cannot send webhooks; poll "
            "GET /v1/jobs/{id} or ask the operator to set VLMQ_WEBHOOK_SECRETS",
            code="webhooks_not_configured",
        )
    resolve_webhook_url(
        webhook.webhook_url,
        allow_http=settings.webhook_allow_http,
        allowed_networks=settings.webhook_allowed_networks,
    )


def _check_prompt(prompt: str | None, max_chars: int) -> str:
    if prompt is None or not prompt.strip():
        raise InvalidInput("a non-empty `prompt` is required", code="missing_prompt")
    if len(prompt) > max_chars:
        raise InvalidInput(
            f"the prompt has {len(prompt)} characters; the limit is {max_chars}",
            code="prompt_too_long",
        )
    if "\x00" in prompt:  # Postgres text cannot hold NUL; without this the insert fails as a 503
        raise InvalidInput("the prompt contains a NUL character", code="invalid_prompt")
    return prompt


def _check_model(deps: ApiDeps, model: str) -> str:
    settings = deps.settings
    if model == settings.model or model in settings.accepted_models:
        return model
    with deps.reads() as session:
        if _storable(model) and workers_repo.is_live(session, model, settings.worker_ttl_seconds):
            return model
        live = [m.model for m in workers_repo.live_models(session, settings.worker_ttl_seconds)]
    served = sorted({settings.model, *settings.accepted_models, *live})
    raise InvalidInput(
        f"unknown model {quoted(model)}; this server takes jobs for {served} (GET /v1/models)",
        code="unknown_model",
    )


def _storable(model: str) -> bool:
    """Whether the name fits `jobs.model`; Postgres refuses NUL even in a lookup."""
    return len(model) <= Job.model.type.length and "\x00" not in model


def _resolve_params(params: GenerationParams, default_max: int, limit: int) -> dict[str, object]:
    resolved = params.model_dump()
    if resolved["max_tokens"] is None:
        resolved["max_tokens"] = default_max
    if resolved["max_tokens"] > limit:
        raise InvalidInput(
            f"max_tokens {resolved['max_tokens']} is above this server's limit {limit}",
            code="max_tokens_too_large",
        )
    return resolved


def _store_image(deps: ApiDeps, key: str, data: bytes, info: ImageInfo) -> None:
    try:
        deps.store.put(key, data, info.content_type)
    except Exception as exc:
        if unreachable(exc):  # expected during an outage: one line, no traceback
            log.warning("storing image %s failed: %s: %s", key, exc.__class__.__name__, exc)
        else:
            log.exception("storing image %s failed", key)
        raise Unavailable("the object store did not take the image; retry shortly") from exc


def _insert_row(deps: ApiDeps, row: dict[str, Any], reservation: Reservation) -> None:
    """One autocommitted INSERT: a single round trip, and the job exists once it returns.
    Near the tenant's quota, a transaction that counts under the tenant's lock first."""
    key = row.get("image_key")  # None for an image given by reference: nothing to clean up
    exact = reservation.limit is not None
    try:
        conn = (deps.engine if exact else deps.autocommit).connect()
    except Exception as exc:  # nothing was sent, so the image has no job
        _delete_quietly(deps, key)
        raise Unavailable("the database is unreachable; retry shortly") from exc
    with conn:
        try:
            if exact:
                _insert_counted(deps, conn, row, reservation)
            else:
                conn.execute(_INSERT_JOB, row)
        except (IntegrityError, RateLimited):
            _delete_quietly(deps, key)
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
        conn.execute(_INSERT_JOB, row)


def _delete_quietly(deps: ApiDeps, key: str | None) -> None:
    if key is None:
        return
    try:
        deps.store.delete(key)
    except Exception as exc:
        log.warning("could not delete orphaned image %s: %s: %s", key, exc.__class__.__name__, exc)
