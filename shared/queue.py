"""The Celery app both sides share: the API enqueues by task name, the worker consumes."""

from __future__ import annotations

import uuid

from celery import Celery

from shared.settings import Settings

RUN_JOB_TASK = "vlmq.run_job"


def make_celery(settings: Settings) -> Celery:
    app = Celery("vlmq", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,  # results live in Postgres, not in Celery's backend
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue_name,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        broker_transport_options=_transport_options(settings),
    )
    return app


def _transport_options(settings: Settings) -> dict[str, object]:
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


def enqueue_job(app: Celery, job_id: uuid.UUID, queue: str) -> None:
    app.send_task(RUN_JOB_TASK, args=[str(job_id)], queue=queue)
