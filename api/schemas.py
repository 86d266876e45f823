"""Request and response bodies of the public API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.models import Job
from shared.status import JobStatus


class GenerationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=-1, ge=-1, le=1000, description="-1 disables top-k")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: list[str] = Field(default_factory=list, max_length=8)

    @model_validator(mode="after")
    def _no_empty_stop(self) -> GenerationParams:
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")
        return self


class ImageSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base64: str | None = None
    url: str | None = None

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


class JobCreate(GenerationParams, JobOptions):
    """JSON form of POST /v1/jobs; generation and scheduling fields sit beside the prompt."""

    image: ImageSource
    prompt: str
    model: str | None = None


class JobResult(BaseModel):
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class JobError(BaseModel):
    code: str
    message: str


class ImageMeta(BaseModel):
    sha256: str
    bytes: int
    format: str
    width: int
    height: int


class JobOut(BaseModel):
    id: uuid.UUID
    status: JobStatus
    model: str
    prompt: str
    params: dict[str, Any]
    image: ImageMeta
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
        default=None, description="while queued: estimated seconds until done, from recent throughput"
    )
    result: JobResult | None
    error: JobError | None

    @classmethod
    def from_row(cls, job: Job) -> JobOut:
        result = None
        if job.status == JobStatus.succeeded and job.result_text is not None:
            result = JobResult(
                text=job.result_text,
                prompt_tokens=job.prompt_tokens or 0,
                completion_tokens=job.completion_tokens or 0,
                finish_reason=job.finish_reason or "stop",
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
            image=ImageMeta(
                sha256=job.image_sha256,
                bytes=job.image_bytes,
                format=job.image_format,
                width=job.image_width,
                height=job.image_height,
            ),
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            attempts=job.attempts,
            priority=job.priority,
            expires_at=job.expires_at,
            result=result,
            error=error,
        )


class JobList(BaseModel):
    data: list[JobOut]
    next_cursor: str | None


class ErrorBody(BaseModel):
    error: JobError


class ModelOut(BaseModel):
    id: str
    workers: int = Field(description="live worker processes serving this model")
    engines: list[str]
    capacity: int = Field(description="jobs the live workers hold in flight together")


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelOut]
