"""Webhook event types (the states of one event's delivery are in status.py)."""

from __future__ import annotations

from enum import StrEnum

from shared.jobs.status import JobStatus
from shared.webhooks.status import DeliveryStatus

__all__ = ["BatchEvent", "DeliveryStatus", "EVENT_FOR_STATUS", "WebhookEvent"]


class WebhookEvent(StrEnum):
    succeeded = "job.succeeded"
    failed = "job.failed"
    cancelled = "job.cancelled"
    expired = "job.expired"


class BatchEvent(StrEnum):
    completed = "batch.completed"
    failed = "batch.failed"
    expired = "batch.expired"
    cancelled = "batch.cancelled"


EVENT_FOR_STATUS: dict[JobStatus, WebhookEvent] = {
    JobStatus.succeeded: WebhookEvent.succeeded,
    JobStatus.failed: WebhookEvent.failed,
    JobStatus.cancelled: WebhookEvent.cancelled,
    JobStatus.expired: WebhookEvent.expired,
}
