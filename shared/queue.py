"""The Celery app both sides share.

The API and the control process send wake-ups (shared/wakeups.py, coalesced) to a model's
queue. GPU workers take those messages many at a time and claim jobs from Postgres in
priority order (worker/intake.py); the control process is an ordinary Celery worker on the
webhook queue.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import redis
from celery import Celery

from shared.settings import BrokerSettings, Settings, queue_for_model

RUN_JOB_TASK = "vlmq.run_job"
DELIVER_WEBHOOK_TASK = "vlmq.deliver_webhook"
# Redis keeps one list per priority step; 0 is served first, as in vLLM's scheduler.
PRIORITY_STEPS = list(range(10))
DEFAULT_PRIORITY = 5
WEBHOOK_VISIBILITY_SECONDS = 300


def make_celery(settings: Settings) -> Celery:
    # Settings whole: the default queue is the worker's model's, on the broker's prefix.
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


def _transport_options(broker: BrokerSettings) -> dict[str, object]:
    if is_redis(broker.broker_url):
        return {
            "priority_steps": PRIORITY_STEPS,
            "queue_order_strategy": "priority",
            # Only the control process acknowledges messages; one it took and died with comes
            # back after this (its delivery is re-dispatched from Postgres sooner anyway).
            "visibility_timeout": WEBHOOK_VISIBILITY_SECONDS,
            "unacked_restore_interval": WEBHOOK_VISIBILITY_SECONDS // 5,
            "unacked_restore_throttle": 1,
        }
    if broker.broker_url.startswith("filesystem://"):
        folder = str(broker.broker_folder.resolve())
        broker.broker_folder.mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": folder,
            "data_folder_out": folder,
            # kombu's default is ./control, relative to whatever folder the process runs in.
            "control_folder": str(broker.broker_folder.resolve() / "control"),
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
    producer: Any = None,
) -> None:
    """`producer` (from `app.producer_or_acquire()`) lets many sends share one connection."""
    app.send_task(
        RUN_JOB_TASK, args=[str(job_id)], queue=queue, priority=priority, countdown=countdown,
        producer=producer,
    )


def enqueue_for_model(
    app: Celery,
    broker: BrokerSettings,
    job_id: uuid.UUID,
    model: str,
    priority: int = DEFAULT_PRIORITY,
    countdown: float | None = None,
    producer: Any = None,
) -> None:
    """Sends the job to the queue its model's workers consume."""
    queue = queue_for_model(broker.queue_prefix, model)
    enqueue_job(app, job_id, queue, priority, countdown, producer)


def enqueue_delivery(app: Celery, broker: BrokerSettings, delivery_id: uuid.UUID) -> None:
    """Asks a control process to make the delivery's due attempt; CPU-only, off the GPU queues."""
    app.send_task(DELIVER_WEBHOOK_TASK, args=[str(delivery_id)], queue=broker.webhook_queue)


def is_redis(broker_url: str) -> bool:
    return broker_url.startswith(("redis://", "rediss://"))


def request_abort(broker: BrokerSettings, job_id: uuid.UUID) -> None:
    """Tells every worker to drop this job from its engine; the one running it frees the slot.

    Best effort (Redis pub/sub): the job is already cancelled in the database, and each
    worker also drops jobs that stopped running at its next upkeep beat, whose result the
    fenced update would discard anyway.
    """
    if not is_redis(broker.broker_url):
        return
    try:
        with redis.Redis.from_url(broker.broker_url, socket_timeout=2) as client:
            client.publish(broker.abort_channel, str(job_id))
    except redis.RedisError:
        logging.getLogger(__name__).warning("could not publish abort for %s", job_id,
                                            exc_info=True)
