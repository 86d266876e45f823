"""Request and response bodies of the public API."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.chat import MAX_MODEL_CHARS
from shared.jobs.params import GenerationParams
from shared.jobs.view import JobError, JobOut
from shared.models import WebhookAttempt, WebhookDelivery
from shared.net.urls import MAX_URL_LENGTH
from shared.webhooks.events import BatchEvent, DeliveryStatus, WebhookEvent

# Every field a job stores is bounded, so a job object, and a page of them, is too. The
# prompt's bound is a setting (VLMQ_MAX_PROMPT_CHARS), checked in api/services/submit.py.
# More than there are events; a list only repeats them past that.
MAX_WEBHOOK_EVENTS = 16
# The stored `params` as JSON, worst case (every stop string at its bound, each character
# escaped as \uXXXX, about 12 KiB; and one structured-output constraint at its bound,
# MAX_CONSTRAINT_BYTES): the field bounds keep it under this, tests/test_bounds.py checks it.
MAX_PARAMS_BYTES = 32 * 1024


class ImageSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base64: str | None = None
    url: str | None = Field(
        default=None,
        description="data:image/...;base64,..., https:// (fetched by the worker) or "
        "s3://bucket/key (a bucket the operator allows)",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageSource:
        if (self.base64 is None) == (self.url is None):
            raise ValueError("give exactly one of image.base64 or image.url")
        return self


class JobOptions(BaseModel):
    """How the job is scheduled, as opposed to how its text is generated."""

    model_config = ConfigDict(extra="forbid")

    priority: int = Field(default=5, ge=0, le=9, description="0 runs first, 9 last")
    max_queue_seconds: int | None = Field(
        default=None, ge=1, le=30 * 86400,
        description="expire the job if it has not started this long after submission",
    )
    keep_image: bool | None = Field(
        default=None,
        description="false: remove the uploaded image as soon as the job ends (default: "
        "the tenant's setting, else the server's VLMQ_KEEP_IMAGES)",
    )


class WebhookOptions(BaseModel):
    """Where the job's terminal event is delivered, instead of (or besides) polling."""

    model_config = ConfigDict(extra="forbid")

    webhook_url: str | None = Field(default=None, max_length=MAX_URL_LENGTH)
    webhook_events: list[WebhookEvent] | None = Field(
        default=None, min_length=1, max_length=MAX_WEBHOOK_EVENTS,
        description="default: every terminal event",
    )

    @model_validator(mode="after")
    def _events_need_url(self) -> WebhookOptions:
        if self.webhook_events is not None and self.webhook_url is None:
            raise ValueError("webhook_events needs a webhook_url")
        return self


class ModelChoice(BaseModel):
    """Which model runs the job; whether it is served is checked on submission."""

    model: str | None = Field(default=None, max_length=MAX_MODEL_CHARS)


_PROMPT = "at most VLMQ_MAX_PROMPT_CHARS characters (16,000 unless the operator changed it)"


class JobCreate(GenerationParams, JobOptions, WebhookOptions, ModelChoice):
    """JSON form of POST /v1/jobs; generation and scheduling fields sit beside the prompt."""

    image: ImageSource | None = Field(default=None, description="the image; or `images`")
    images: list[ImageSource] | None = Field(
        default=None, description="several images, placed in the prompt in this order: at "
        "most VLMQ_MAX_IMAGES_PER_JOB (8 unless the operator changed it); or `image`")
    prompt: str = Field(description=_PROMPT)

    @model_validator(mode="after")
    def _image_or_images(self) -> JobCreate:
        if self.image is not None and self.images is not None:
            raise ValueError("give `image` or `images`, not both")
        return self


class JobCreateForm(GenerationParams, JobOptions, WebhookOptions, ModelChoice):
    """Multipart form of POST /v1/jobs: the JSON form's fields, with the image as a file part.

    Documents the form; the route reads it field by field (repeated `stop`, `choices`,
    `image_offsets` and `webhook_events` parts, one file per image) and validates it with the
    same models as JSON.
    """

    response_format: str | None = Field(  # type: ignore[assignment]
        default=None, description="the JSON form's `response_format` object, as JSON text")
    image: bytes = Field(description="the image file (JPEG, PNG, WEBP, GIF, BMP, TIFF, HEIC "
                         "or AVIF); repeat the part for several images, placed in the prompt "
                         "in the order sent (at most VLMQ_MAX_IMAGES_PER_JOB)")
    prompt: str = Field(description=_PROMPT)


class DeliveryAttemptOut(BaseModel):
    number: int
    started_at: datetime
    finished_at: datetime | None = Field(description="null while in flight")
    status_code: int | None
    latency_ms: int | None
    error: str | None


class DeliveryOut(BaseModel):
    id: uuid.UUID
    job_id: uuid.UUID | None = Field(description="the job whose event this is; null for a batch's")
    batch_id: str | None = Field(default=None, description="the batch whose event this is")
    event: WebhookEvent | BatchEvent
    url: str
    webhook_id: str = Field(description="the webhook-id header; the same on every attempt")
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    history: list[DeliveryAttemptOut]

    @classmethod
    def from_row(cls, delivery: WebhookDelivery, attempts: list[WebhookAttempt]) -> DeliveryOut:
        return cls(
            id=delivery.id,
            job_id=delivery.job_id,
            batch_id=delivery.batch_id,
            event=(BatchEvent(delivery.event) if delivery.batch_id
                   else WebhookEvent(delivery.event)),
            url=delivery.url,
            webhook_id=delivery.message_id,
            status=delivery.status,
            attempts=delivery.attempts,
            next_attempt_at=delivery.next_attempt_at,
            created_at=delivery.created_at,
            delivered_at=delivery.delivered_at,
            last_status_code=delivery.last_status_code,
            last_error=delivery.last_error,
            history=[
                DeliveryAttemptOut(
                    number=a.number,
                    started_at=a.started_at,
                    finished_at=a.finished_at,
                    status_code=a.status_code,
                    latency_ms=a.latency_ms,
                    error=a.error,
                )
                for a in attempts
            ],
        )


class DeliveryList(BaseModel):
    data: list[DeliveryOut]
    next_cursor: str | None = None


class JobList(BaseModel):
    data: list[JobOut]
    next_cursor: str | None


class JobDeleted(BaseModel):
    id: uuid.UUID
    object: str = "job"
    deleted: bool = True


class ErrorBody(BaseModel):
    error: JobError


class ModelOut(BaseModel):
    id: str
    workers: int = Field(description="live worker processes serving this model")
    engines: list[str]
    capacity: int = Field(description="jobs the live workers hold in flight together")
    queued: int = Field(description="jobs of this model waiting to run, batch lines included")
    running: int = Field(description="jobs of this model running now")
    oldest_queued_seconds: float | None = Field(
        description="how long the oldest waiting job has waited; null when none waits")


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelOut]
