"""Runs one job: claim it, fetch and prepare its image, generate, record the outcome."""

from __future__ import annotations

import logging
import uuid

from shared import jobs_repo
from shared.images import prepare_image
from shared.jobs_repo import JobOutcome
from shared.models import Job
from worker.context import WorkerContext
from worker.engines.base import EngineError, GenerationRequest, RequestAborted, RequestRejected

log = logging.getLogger(__name__)


def run_job(ctx: WorkerContext, job_id: uuid.UUID) -> str:
    """Returns the outcome as a short word, for logs and Flower."""
    job = _claim(ctx, job_id)
    if job is None:
        return "skipped"
    try:
        image = prepare_image(ctx.store.get(job.image_key), ctx.settings.worker_max_pixels)
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
    except EngineError as exc:
        return _fail(ctx, job_id, "engine_error", str(exc))
    except Exception as exc:
        log.exception("job %s: engine raised", job_id)
        return _fail(ctx, job_id, "engine_error", f"{exc.__class__.__name__}: {exc}")

    outcome = JobOutcome(
        text=output.text,
        prompt_tokens=output.prompt_tokens,
        completion_tokens=output.completion_tokens,
        finish_reason=output.finish_reason,
    )
    with ctx.sessions() as session:
        stored = jobs_repo.mark_succeeded(session, job_id, outcome)
    ctx.metrics.jobs.labels(outcome="succeeded" if stored else "discarded").inc()
    return "succeeded" if stored else "discarded"


def _claim(ctx: WorkerContext, job_id: uuid.UUID) -> Job | None:
    with ctx.sessions() as session:
        job = jobs_repo.claim(session, job_id)
        if job is None:
            log.info("job %s: not queued (gone, taken, cancelled or expired); not running it",
                     job_id)
            return None
        wait = jobs_repo.utcnow() - jobs_repo.as_utc(job.created_at)
        ctx.metrics.queue_wait.observe(max(wait.total_seconds(), 0.0))
        return job


def _fail(ctx: WorkerContext, job_id: uuid.UUID, code: str, message: str) -> str:
    with ctx.sessions() as session:
        jobs_repo.mark_failed(session, job_id, code, message)
    ctx.metrics.jobs.labels(outcome="failed").inc()
    return "failed"
