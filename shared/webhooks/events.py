"""Webhook event types and the states of one event's delivery."""

from __future__ import annotations

from enum import StrEnum

from shared.jobs.status import JobStatus


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


class DeliveryStatus(StrEnum):
    pending = "pending"  # an attempt is due now or scheduled
    succeeded = "succeeded"  # the endpoint answered 2xx
    disabled = "disabled"  # the endpoint answered 410 Gone: no more attempts for this job
    dead_lettered = "dead_lettered"  # every scheduled attempt failed; replayable
