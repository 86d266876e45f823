"""The public job object: what `GET /v1/jobs/{id}` returns and what webhooks carry."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.jobs.status import JobStatus
from shared.jobs.structured import parsed_json
from shared.models import Job


class JobResult(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    # `json` would shadow a BaseModel method; it is `json` on the wire.
    json_: Any = Field(
        default=None, alias="json",
        description="for a response_format job, the text parsed as JSON; null for other jobs "
        "and for text that is not complete JSON (cut short: finish_reason `length`)",
    )


class JobError(BaseModel):
    code: str
    message: str


class ImageMeta(BaseModel):
    sha256: str
    bytes: int
    format: str
    width: int
    height: int
    stored: bool = Field(default=True, description="false once the image was removed from "
                         "the store (the job's keep_image was false and it ended)")


class JobImage(BaseModel):
    """One of a job's images, in prompt order: an upload's description, or a reference."""

    url: str | None = Field(default=None, description="where the worker fetches the image "
                            "from; null for an upload")
    sha256: str | None = None
    bytes: int | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    stored: bool = Field(default=False, description="whether vlmq holds the image (GET "
                         "/v1/jobs/{id}/image?index=n); false for a reference and once removed")


class JobOut(BaseModel):
    id: uuid.UUID
    status: JobStatus
    model: str
    prompt: str
    params: dict[str, Any]
    image: ImageMeta | None = Field(
        description="the uploaded image; null when the image is given by image_url"
    )
    image_url: str | None = Field(
        default=None, description="where the worker fetches the image from, when not uploaded"
    )
    images: list[JobImage] = Field(
        default_factory=list, description="every image of the job in prompt order, the "
        "first being `image` / `image_url`")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    priority: int
    expires_at: datetime | None
    queue_position: int | None = Field(
        default=None, description="while queued: jobs of this model that run first"
    )
    eta_seconds: float | None = Field(
        default=None,
        description="while queued: estimated seconds until done, from recent throughput; "
        "while no worker serves the job's model (`waiting_for_worker`), the model's last "
        "measured cold start, the least wait for a worker to start and take it (null if "
        "none was ever measured); null before a live model has finished any job",
    )
    waiting_for_worker: bool | None = Field(
        default=None,
        description="while queued: true when no worker serving the job's model is live, so "
        "the job waits for one to start (or to finish loading its model)",
    )
    result: JobResult | None
    error: JobError | None
    webhook_url: str | None = None
    webhook_events: list[str] | None = None
    batch_id: str | None = Field(default=None, description="the batch this job is a line of")
    custom_id: str | None = Field(default=None, description="the line's custom_id")
    keep_image: bool = Field(default=True, description="false: the uploaded image is removed "
                             "from the store as soon as the job ends")

    @classmethod
    def from_row(cls, job: Job) -> JobOut:
        result = None
        if job.status == JobStatus.succeeded and job.result_text is not None:
            result = JobResult(
                text=job.result_text,
                prompt_tokens=job.prompt_tokens or 0,
                completion_tokens=job.completion_tokens or 0,
                finish_reason=job.finish_reason or "stop",
                json=parsed_json(job.params, job.result_text),
            )
        error = None
        if job.error_code is not None:
            error = JobError(code=job.error_code, message=job.error_message or "")
        return cls(
            id=job.id,
            status=job.status,
            model=job.model,
            prompt=job.prompt,
            params=job.params,
            image=_image_meta(job),
            image_url=job.image_url,
            images=_images(job),
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            attempts=job.attempts,
            priority=job.priority,
            expires_at=job.expires_at,
            result=result,
            error=error,
            webhook_url=job.webhook_url,
            webhook_events=job.webhook_events,
            batch_id=job.batch_id,
            custom_id=job.custom_id,
            keep_image=job.keep_image is not False,
        )


def _image_meta(job: Job) -> ImageMeta | None:
    """What the API recorded of an upload; a referenced image has no record until fetched."""
    if (
        job.image_sha256 is None or job.image_bytes is None or job.image_format is None
        or job.image_width is None or job.image_height is None
    ):
        return None
    return ImageMeta(
        sha256=job.image_sha256,
        bytes=job.image_bytes,
        format=job.image_format,
        width=job.image_width,
        height=job.image_height,
        stored=job.image_key is not None,
    )


def _images(job: Job) -> list[JobImage]:
    first = JobImage(url=job.image_url, sha256=job.image_sha256, bytes=job.image_bytes,
                     format=job.image_format, width=job.image_width, height=job.image_height,
                     stored=job.image_key is not None)
    return [first, *(JobImage(url=e.get("url"), sha256=e.get("sha256"), bytes=e.get("bytes"),
                              format=e.get("format"), width=e.get("width"),
                              height=e.get("height"), stored=e.get("key") is not None)
                     for e in job.extra_images or ())]
