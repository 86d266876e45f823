"""`vlmq control` (alias `vlmq webhooks`): the CPU control process. It loads no model.

- the job sweeper: leases and deadlines (only one process sweeps at a time, under an
  advisory lock), so deadlines expire and `job.expired` events go out even while no GPU
  worker runs;
- the retention sweeper (shared/retention/sweeper.py): images, jobs, batches and files
  past their time, the rows they leave, and objects no row names, under a lock of its own;
- batch work (worker/control/batches.py): validation, expansion into jobs, finalization,
  expiry and cancel, each batch under its own lease, so several control processes can run;
- webhooks (worker/webhooks/): the dispatcher turns due deliveries into messages on the
  webhook queue, and this process consumes that queue as a Celery worker whose threads
  sign and send them, so slow or dead endpoints tie up this process and never a GPU
  worker's.

Without a webhook signing secret it runs the sweeper and batch work only, and says once
that webhook delivery is off (the API then refuses `webhook_url`, so no delivery waits).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import uuid

from shared.jobs import events as task_events
from shared.jobs.lifecycle import RetryPolicy as JobRetryPolicy
from shared.jobs.sweeper import Sweeper
from shared.queue import DELIVER_WEBHOOK_TASK
from shared.retention.sweeper import RetentionSweeper
from shared.settings import Settings
from shared.storage import make_store
from shared.wakeups import WakeupSender
from worker.control.batches import BatchRunner
from worker.control.metrics import ControlMetrics
from worker.supervision import ShutdownWatch, restart_if_died
from worker.webhooks.delivery import WebhookContext, deliver
from worker.webhooks.dispatcher import Dispatcher

log = logging.getLogger("vlmq.control")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    metrics = ControlMetrics()
    ctx = WebhookContext.start(settings, metrics)
    if settings.metrics_port:
        metrics.watch_queues(ctx.sessions, settings.worker_ttl_seconds)
        metrics.serve(settings.metrics_port, settings.metrics_host)
    wakeups = WakeupSender(ctx.celery, settings)
    wakeups.start()
    # The node name the Celery worker below takes (--hostname=control@%h), so Flower lists
    # the jobs this process ends (expiry, lapsed leases, batch lines) under it.
    events = task_events.start_sending(ctx.celery, f"control@{socket.gethostname()}",
                                       settings.task_events)
    sweeper = Sweeper(ctx.db, ctx.sessions, JobRetryPolicy.from_settings(settings),
                      settings.sweep_seconds)
    sweeper.start()
    store = make_store(settings)
    retention = RetentionSweeper(ctx.db, ctx.sessions, store, settings,
                                 on_swept=metrics.count_swept)
    retention.start()
    batches = BatchRunner(settings, ctx.sessions, store, wakeups, metrics)
    batches.start()
    watch = None
    try:
        if settings.webhook_secrets:
            watch = _deliver_webhooks(ctx, argv)
        else:
            log.warning("webhook delivery is off: no signing secret (VLMQ_WEBHOOK_SECRETS; "
                        "`vlmq webhook-secret` prints one); running the sweeper and batches")
            _wait_for_signal()
    finally:
        batches.stop()
        retention.stop()
        sweeper.stop()  # before ctx.close(): stopping releases the lock on its connection
        task_events.stop_sending(events)
        wakeups.stop()
        ctx.close()
    if watch is not None:
        restart_if_died(watch)


def _deliver_webhooks(ctx: WebhookContext, argv: list[str] | None) -> ShutdownWatch:
    """The dispatcher, and a Celery worker on the webhook queue until a shutdown."""
    settings = ctx.settings
    app = ctx.celery

    @app.task(name=DELIVER_WEBHOOK_TASK)
    def deliver_task(delivery_id: str) -> str:
        return deliver(ctx, uuid.UUID(delivery_id))

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
                "--hostname=control@%h",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
                "--task-events",
                *(argv or []),
            ]
        )
    finally:
        dispatcher.stop()
    return watch


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("control process ready.")  # as Celery's worker says it, for whoever waits on it
    stop.wait()
    log.info("stopping")


if __name__ == "__main__":
    main()
