"""`vlmq webhooks`: a CPU-only Celery worker that delivers signed webhooks.

It consumes only the webhook queue and loads no model, so slow or dead endpoints tie up
this process's threads and never a GPU worker's. It also runs a job sweeper (only one
process sweeps at a time), so deadlines expire and `job.expired` events go out even
while no GPU worker runs.
"""

from __future__ import annotations

import logging
import uuid

from shared.jobs.lifecycle import RetryPolicy as JobRetryPolicy
from shared.jobs.sweeper import Sweeper
from shared.queue import DELIVER_WEBHOOK_TASK
from shared.settings import Settings
from worker.supervision import ShutdownWatch, restart_if_died
from worker.webhooks.delivery import WebhookContext, deliver
from worker.webhooks.dispatcher import Dispatcher


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    if not settings.webhook_secrets:
        raise SystemExit(
            "vlmq webhooks: no signing secret; set VLMQ_WEBHOOK_SECRETS='[\"whsec_...\"]' "
            "(`vlmq webhook-secret` prints a new one)"
        )
    ctx = WebhookContext.start(settings)
    if settings.metrics_port:
        ctx.metrics.serve(settings.metrics_port, settings.metrics_host)
    app = ctx.celery

    @app.task(name=DELIVER_WEBHOOK_TASK)
    def deliver_task(delivery_id: str) -> str:
        return deliver(ctx, uuid.UUID(delivery_id))

    sweeper = Sweeper(ctx.db, ctx.sessions, JobRetryPolicy.from_settings(settings),
                      settings.sweep_seconds)
    sweeper.start()
    dispatcher = Dispatcher(ctx)
    dispatcher.start()
    watch = ShutdownWatch()
    try:
        app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={settings.webhook_concurrency}",
                f"--queues={settings.webhook_queue}",
                "--hostname=webhooks@%h",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
                "--task-events",
                *(argv or []),
            ]
        )
    finally:
        dispatcher.stop()
        sweeper.stop()  # before ctx.close(): stopping releases the lock on its connection
        ctx.close()
    restart_if_died(watch)


if __name__ == "__main__":
    main()
