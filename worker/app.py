"""The worker's Celery app: the resident engine is loaded before consuming, released in a finally."""

from __future__ import annotations

import logging
import uuid

from celery import Celery
from celery.worker.control import control_command

from shared.queue import ABORT_COMMAND, RUN_JOB_TASK
from shared.settings import Settings
from worker.context import WorkerContext
from worker.heartbeat import Heartbeat
from worker.runner import run_job
from worker.supervision import ShutdownWatch, restart_if_died

log = logging.getLogger(__name__)


def build_worker_app(settings: Settings, ctx: WorkerContext) -> Celery:
    app = ctx.celery

    @app.task(name=RUN_JOB_TASK)
    def run_job_task(job_id: str) -> str:
        return run_job(ctx, uuid.UUID(job_id))

    @control_command(name=ABORT_COMMAND, args=[("job_id", str)], signature="<job_id>")
    def abort_job(state: object, job_id: str) -> dict[str, str]:
        # Every worker hears the broadcast; aborting a request it does not hold is a no-op.
        ctx.engine.abort(job_id)
        return {"ok": f"abort requested for {job_id}"}

    return app


def concurrency_for(settings: Settings) -> int:
    """Enough task threads to keep the engine's batch full; each thread holds one job."""
    return settings.worker_concurrency or settings.max_batch_size


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    ctx = WorkerContext.start(settings)
    heartbeat = Heartbeat(ctx)
    watch = ShutdownWatch()
    try:
        app = build_worker_app(settings, ctx)
        heartbeat.start()
        app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={concurrency_for(settings)}",
                f"--queues={settings.queue_name}",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
                "--task-events",  # lets Flower show tasks
                *(argv or []),
            ]
        )
    finally:
        heartbeat.stop()
        ctx.close()
    restart_if_died(watch)
