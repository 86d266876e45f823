"""Runs one job: claim it, fetch and prepare its image, generate, record the outcome."""

from __future__ import annotations

import logging
import uuid

from shared.images import prepare_image
from shared.jobs import repo as jobs_repo
from shared.jobs.repo import JobOutcome
from shared.models import Job
from shared.queue import enqueue_for_model
from shared.timeutil import as_utc, utcnow
from worker.context import WorkerContext
from worker.engines.base import GenerationRequest, RequestAborted, RequestRejected

log = logging.getLogger(__name__)


def run_job(ctx: WorkerContext, job_id: uuid.UUID) -> str:
    """Returns the outcome as a short word, for logs and Flower."""
    job = _claim(ctx, job_id)
    if job is None:
        return "skipped"
    ctx.running.add(job_id)
    try:
        return _run_claimed(ctx, job)
    except Exception as exc:
        # A database or broker error while recording: the job must not stay running.
        log.exception("job %s: unexpected error", job_id)
        return _retry_or_fail(ctx, job, "internal_error", f"{exc.__class__.__name__}: {exc}")
    finally:
        ctx.running.discard(job_id)


def _run_claimed(ctx: WorkerContext, job: Job) -> str:
    job_id = job.id
    try:
        data = ctx.store.get(job.image_key)
    except Exception as exc:
        log.warning("job %s: fetching image %s failed", job_id, job.image_key, exc_info=True)
        return _retry_or_fail(ctx, job, "storage_error", f"could not fetch the image: {exc}")
    try:
        image = prepare_image(data, ctx.settings.worker_max_pixels)
    except Exception as exc:
        log.exception("job %s: image %s unusable", job_id, job.image_key)
        return _fail(ctx, job_id, "image_unreadable", f"could not read the stored image: {exc}")

    request = GenerationRequest(
        request_id=str(job_id),
        prompt=job.prompt,
        image=image,
        params={**job.params, "priority": job.priority},
    )
    try:
        output = ctx.engine.generate(request)
    except RequestRejected as exc:
        return _fail(ctx, job_id, exc.code, exc.message)
    except RequestAborted:
        log.info("job %s: aborted in the engine", job_id)
        return "aborted"
    except Exception as exc:  # EngineError or anything else the engine raised
        log.warning("job %s: engine failed: %s", job_id, exc)
        return _retry_or_fail(ctx, job, "engine_error", f"{exc.__class__.__name__}: {exc}")

    outcome = JobOutcome(
        text=output.text,
        prompt_tokens=output.prompt_tokens,
        completion_tokens=output.completion_tokens,
        finish_reason=output.finish_reason,
    )
    with ctx.sessions() as session:
        stored = jobs_repo.mark_succeeded(session, job_id, outcome)
    if not stored:
        log.info("job %s: result discarded; the job was cancelled or taken over", job_id)
    ctx.metrics.jobs.labels(outcome="succeeded" if stored else "discarded").inc()
    return "succeeded" if stored else "discarded"


def _claim(ctx: WorkerContext, job_id: uuid.UUID) -> Job | None:
    with ctx.sessions() as session:
        job = jobs_repo.claim(session, job_id, ctx.settings.lease_seconds)
        if job is None:
            log.info("job %s: not queued (gone, taken, cancelled or expired); not running it",
                     job_id)
            return None
        wait = utcnow() - as_utc(job.created_at)
        ctx.metrics.queue_wait.observe(max(wait.total_seconds(), 0.0))
        return job


def _retry_or_fail(ctx: WorkerContext, job: Job, code: str, message: str) -> str:
    """Transient failure: back to the queue after a backoff, unless attempts are used up."""
    attempt = job.attempts + 1  # `job` was read just before this attempt's claim
    s = ctx.settings
    if attempt >= s.max_attempts:
        return _fail(ctx, job.id, code, f"{message} (after {attempt} attempts)")
    delay = min(s.retry_backoff_seconds * 2 ** (attempt - 1), s.retry_backoff_max_seconds)
    with ctx.sessions() as session:
        if not jobs_repo.requeue(session, job.id, code, message, delay_seconds=delay):
            return "skipped"
    enqueue_for_model(ctx.celery, s, job.id, job.model, job.priority, countdown=delay)
    log.info("job %s: attempt %d failed (%s); retrying in %.1fs", job.id, attempt, code, delay)
    ctx.metrics.jobs.labels(outcome="retried").inc()
    return "retried"


def _fail(ctx: WorkerContext, job_id: uuid.UUID, code: str, message: str) -> str:
    with ctx.sessions() as session:
        jobs_repo.mark_failed(session, job_id, code, message)
    ctx.metrics.jobs.labels(outcome="failed").inc()
    return "failed"
