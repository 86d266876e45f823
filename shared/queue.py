"""The Celery app both sides share: the API enqueues by task name, the worker consumes."""

from __future__ import annotations

import logging
import uuid

from celery import Celery

from shared.settings import Settings, queue_for_model

RUN_JOB_TASK = "vlmq.run_job"
DELIVER_WEBHOOK_TASK = "vlmq.deliver_webhook"
# Redis keeps one list per priority step; 0 is served first, as in vLLM's scheduler.
PRIORITY_STEPS = list(range(10))
DEFAULT_PRIORITY = 5


def make_celery(settings: Settings) -> Celery:
    app = Celery("vlmq", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,  # results live in Postgres, not in Celery's backend
        worker_prefetch_multiplier=1,
        task_default_priority=DEFAULT_PRIORITY,
        task_default_queue=settings.queue_name,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        broker_transport_options=_transport_options(settings),
    )
    return app


def _transport_options(settings: Settings) -> dict[str, object]:
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return {
            "priority_steps": PRIORITY_STEPS,
            "queue_order_strategy": "priority",
            # A message taken by a worker that died comes back after this, not after the
            # 1-hour default; the lease reaper requeues the job itself sooner.
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": max(1, settings.visibility_timeout // 5),
            "unacked_restore_throttle": 1,
        }
    if settings.broker_url.startswith("filesystem://"):
        folder = str(settings.broker_folder.resolve())
        settings.broker_folder.mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": folder,
            "data_folder_out": folder,
            # kombu's default is ./control, relative to whatever folder the process runs in.
            "control_folder": str(settings.broker_folder.resolve() / "control"),
            "store_processed": False,
            "polling_interval": 0.1,
        }
    return {}


def enqueue_job(
    app: Celery,
    job_id: uuid.UUID,
    queue: str,
    priority: int = DEFAULT_PRIORITY,
    countdown: float | None = None,
) -> None:
    app.send_task(
        RUN_JOB_TASK, args=[str(job_id)], queue=queue, priority=priority, countdown=countdown
    )


def enqueue_for_model(
    app: Celery,
    settings: Settings,
    job_id: uuid.UUID,
    model: str,
    priority: int = DEFAULT_PRIORITY,
    countdown: float | None = None,
) -> None:
    """Sends the job to the queue its model's workers consume."""
    queue = queue_for_model(settings.queue_prefix, model)
    enqueue_job(app, job_id, queue, priority, countdown)


def enqueue_delivery(app: Celery, settings: Settings, delivery_id: uuid.UUID) -> None:
    """Asks a webhook worker to make the delivery's due attempt; CPU-only, off the GPU queues."""
    app.send_task(DELIVER_WEBHOOK_TASK, args=[str(delivery_id)], queue=settings.webhook_queue)


ABORT_COMMAND = "vlmq_abort"


def request_abort(app: Celery, job_id: uuid.UUID) -> None:
    """Tells every worker to drop this job from its engine; the one running it frees the slot.

    Best effort: the job is already cancelled in the database, so a worker that misses
    this message finishes the work and its result is discarded by the guarded update.
    """
    try:
        app.control.broadcast(ABORT_COMMAND, arguments={"job_id": str(job_id)})
    except Exception:  # e.g. the filesystem broker has no broadcast
        logging.getLogger(__name__).warning("could not broadcast abort for %s", job_id,
                                            exc_info=True)
