"""Job admission, acceptance, long polling, cancel and listing: what the /v1/jobs and chat
completion routes call."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass
from typing import BinaryIO

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker

from api.deps import ApiDeps
from api.schemas.native import JobOut
from api.services.submit import Accepted, Submission, submit_job
from shared.errors import Conflict, Gone, InvalidInput, NotFound, RateLimited
from shared.images import CONTENT_TYPES
from shared.jobs import lifecycle
from shared.jobs import repo as jobs_repo
from shared.jobs.status import TERMINAL, JobStatus
from shared.models import Job
from shared.queue import request_abort
from shared.retention import removal
from shared.settings import BrokerSettings
from shared.storage import ObjectStore
from shared.tenancy.principal import Principal
from shared.tenancy.repo import Authenticated

_MAX_IDEMPOTENCY_KEY = 200


async def wait_for_end(deps: ApiDeps, job_id: uuid.UUID, tenant: str | None,
                       wait: float) -> JobOut:
    """The job once it ends, or as it stands after `wait` seconds."""
    if wait <= 0:
        return await run_in_threadpool(_read, deps, job_id, tenant, True)
    deadline = time.monotonic() + wait
    # Watching starts before the first read, so an end in between still wakes us.
    with deps.watch.watch(job_id) as woken:
        while True:
            last = time.monotonic() >= deadline
            woken.clear()
            out = await run_in_threadpool(_read, deps, job_id, tenant, last)
            if out.status in TERMINAL or last:
                return out
            # Holds no thread and no connection: the watch sets `woken` when the job ends.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), deadline - time.monotonic())


def _read(deps: ApiDeps, job_id: uuid.UUID, tenant_id: str | None, estimate: bool) -> JobOut:
    """The job as stored; with `estimate`, a queued job's place in line too."""
    with deps.reads() as session:
        job = _readable(jobs_repo.get_job(session, job_id, tenant_id), job_id)
        out = JobOut.from_row(job)
        if estimate and job.status == JobStatus.queued:
            place = jobs_repo.queue_estimate(session, job, deps.settings.worker_ttl_seconds)
            out.queue_position, out.eta_seconds = place.position, place.eta_seconds
            out.waiting_for_worker = place.waiting_for_worker
        return out


async def admit(deps: ApiDeps, auth: Authenticated) -> None:
    """The tenant's rate and quota, checked before the body is read: a refused submission
    costs no upload work."""
    if deps.limits.apply_to(auth):
        try:
            await run_in_threadpool(deps.limits.admit, auth)
        except RateLimited as exc:
            deps.metrics.refused.labels(auth.principal.tenant_id, exc.code).inc()
            raise


async def accept(deps: ApiDeps, sub: Submission) -> Accepted:
    accepted = await run_in_threadpool(submit_job, deps, sub)
    if not accepted.replayed:
        deps.metrics.submissions.labels(sub.tenant_id, accepted.job.model).inc()
    return accepted


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > _MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise InvalidInput(
            f"Idempotency-Key must be 1 to {_MAX_IDEMPOTENCY_KEY} printable characters",
            code="invalid_idempotency_key",
        )
    return key


def cancel_job(sessions: sessionmaker[Session], broker: BrokerSettings, job_id: uuid.UUID,
               tenant: str | None) -> Job:
    """Cancels a queued or running job (NotFound, or Conflict once it has ended)."""
    with sessions.begin() as session:
        job, previous = lifecycle.cancel(session, job_id, tenant)
    # After the commit: a worker told to abort finds the job already cancelled.
    if previous == JobStatus.running:
        request_abort(broker, job_id)
    return job


def list_jobs(reads: sessionmaker[Session], principal: Principal, *,
              status: JobStatus | None, model: str | None, tenant: str | None,
              batch_id: str | None, limit: int, cursor: str | None) -> jobs_repo.Page:
    """Newest first, with the cursor to the next page. `tenant` is the one asked for, which
    only an admin key's filter honours."""
    if any(v is not None and "\x00" in v for v in (model, tenant, batch_id)):
        return jobs_repo.Page(jobs=[], next_cursor=None)  # no NUL in Postgres
    with reads() as session:
        return jobs_repo.list_jobs(
            session, status=status, model=model, tenant_id=principal.tenant_filter(tenant),
            batch_id=batch_id, limit=limit, cursor=cursor,
        )


def delete_job(sessions: sessionmaker[Session], store: ObjectStore, job_id: uuid.UUID,
               tenant: str | None) -> None:
    """An ended job's image, prompt, result and deliveries go (Conflict while it runs)."""
    removal.delete_job(sessions, store, job_id, tenant)


def _readable(job: Job | None, job_id: uuid.UUID) -> Job:
    """The job, unless it is unknown (NotFound) or its data was removed (Gone)."""
    if job is None:
        raise NotFound(f"no job with id {job_id}")
    if job.purged_at is not None:
        raise removal.gone("job", job_id, job.purged_at)
    return job


@dataclass(frozen=True)
class StoredImage:
    source: BinaryIO  # the caller closes it
    content_type: str
    filename: str


def open_image(reads: sessionmaker[Session], store: ObjectStore, job_id: uuid.UUID,
               tenant: str | None, index: int = 0) -> StoredImage:
    """The job's uploaded image as a stream, with its content type.

    A job whose image was given by reference (`image_url`) has nothing in our store: that is
    a Conflict (`image_by_reference`) rather than a redirect, since an s3:// reference has
    no URL a browser could follow and following an https:// one would make this API send
    its callers to any address a client once named. The URL is in the job object already.
    """
    with reads() as session:
        job = _readable(jobs_repo.get_job(session, job_id, tenant), job_id)
        key, fmt, url = job.image_key, job.image_format, job.image_url
        extra = job.extra_images or []
    if index > len(extra):
        raise NotFound(f"job {job_id} has {len(extra) + 1} image(s); `index` counts from 0",
                       code="image_not_found")
    if index > 0:
        entry = extra[index - 1]
        key, fmt, url = entry.get("key"), entry.get("format"), entry.get("url")
    if key is None and url is None:
        raise Gone(f"job {job_id}'s image was removed when the job ended (keep_image "
                   "false)", code="expired_data")
    if key is None:
        raise Conflict(f"job {job_id}'s image was given by reference (its image_url), so "
                       "vlmq holds no copy", code="image_by_reference")
    try:
        source = store.open(key)
    except FileNotFoundError as exc:
        raise NotFound(f"job {job_id}'s image is no longer stored",
                       code="image_not_stored") from exc
    # Only formats the upload check accepted reach the store; their types are fixed here,
    # never taken from the client.
    content_type = CONTENT_TYPES.get(fmt or "", "application/octet-stream")
    extension = (fmt or "bin").lower().replace("jpeg", "jpg")
    name = f"{job_id}.{extension}" if index == 0 else f"{job_id}.{index}.{extension}"
    return StoredImage(source, content_type, name)
