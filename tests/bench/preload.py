"""A queue filled before any worker starts, then drained by one worker.

The drain and ceiling arms use it: the figure is the worker's own rate, from its first
claim to its last result, with no client or API competing for the CPU meanwhile.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, insert, select

from shared.db import make_engine, make_session_factory
from shared.images import inspect_image
from shared.jobs.status import TERMINAL, JobStatus
from shared.models import Job
from shared.queue import enqueue_for_model, make_celery
from shared.settings import Settings
from shared.storage import make_store
from shared.timeutil import utcnow


@dataclass
class DrainResult:
    jobs: int
    seconds: float  # first claim to last result, from the job rows
    jobs_per_s: float
    succeeded: int
    started: float  # first claim, epoch seconds: windows for CPU samples taken meanwhile
    finished: float  # last result, epoch seconds


def preload(settings: Settings, tenant: str, n: int, image: Callable[[int], bytes],
            prompt: Callable[[int], str], params: dict[str, object],
            enqueue: bool = True) -> list[uuid.UUID]:
    """Stores n images, inserts n queued rows of `tenant` (which must exist) in one
    statement, sends n messages.

    Without `enqueue` the rows wait unannounced, for arms that release them later.
    """
    store = make_store(settings)
    rows = []
    for i in range(n):
        data = image(i)
        info = inspect_image(data, max_bytes=settings.max_upload_bytes,
                             max_pixels=settings.max_image_pixels,
                             max_side=settings.max_image_side,
                             allowed_formats=settings.allowed_formats)
        job_id = uuid.uuid4()
        store.put(f"images/{job_id}", data, info.content_type)
        rows.append(dict(
            id=job_id, tenant_id=tenant, status=JobStatus.queued, model=settings.model,
            prompt=prompt(i), params=params, image_key=f"images/{job_id}",
            image_sha256=info.sha256, image_bytes=info.size, image_format=info.format,
            image_width=info.width, image_height=info.height, attempts=0, priority=5,
            runnable_at=utcnow(),
        ))
    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            session.execute(insert(Job), rows)
            session.commit()
    finally:
        engine.dispose()
    ids = [row["id"] for row in rows]
    if enqueue:
        announce(settings, ids)
    print(f"bench: {n} jobs queued", file=sys.stderr, flush=True)
    return ids


def announce(settings: Settings, ids: list[uuid.UUID]) -> None:
    """One wake-up message per job on the model's queue, over one connection."""
    celery = make_celery(settings)
    with celery.producer_or_acquire() as producer:
        for job_id in ids:
            enqueue_for_model(celery, settings, job_id, settings.model, 5, producer=producer)


def wait_drained(settings: Settings, ids: list[uuid.UUID], timeout: float = 900,
                 check: Callable[[], None] | None = None) -> DrainResult:
    """`check` runs at each poll and raises to give up early (a worker that exited)."""
    engine = make_engine(settings)
    sessions = make_session_factory(engine)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with sessions() as session:
                done = session.scalar(select(func.count()).where(
                    Job.id.in_(ids), Job.status.in_(list(TERMINAL)))) or 0
                if done >= len(ids):
                    first, last = session.execute(select(
                        func.min(Job.started_at), func.max(Job.finished_at)
                    ).where(Job.id.in_(ids))).one()
                    succeeded = session.scalar(select(func.count()).where(
                        Job.id.in_(ids), Job.status == JobStatus.succeeded)) or 0
                    seconds = (last - first).total_seconds()
                    return DrainResult(len(ids), seconds, len(ids) / seconds, succeeded,
                                       first.timestamp(), last.timestamp())
            if check is not None:
                check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{done} of {len(ids)} jobs finished in {timeout}s")
            time.sleep(0.2)
    finally:
        engine.dispose()
