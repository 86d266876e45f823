"""SQLAlchemy models. API schemas live apart, in api/schemas/."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from shared.jobs.status import JobStatus
from shared.webhooks.events import DeliveryStatus


def _utcnow() -> datetime:
    # Set in Python so SQLite keeps microseconds, which cursor pagination orders by.
    return datetime.now(timezone.utc)


class UtcDateTime(TypeDecorator[datetime]):
    """A moment in UTC, aware on every backend. Postgres keeps the zone itself; SQLite
    stores text without one and hands back naive values, which would reach clients without
    their `Z` and fail comparisons with aware ones (a backfill's dry run did)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None or value.tzinfo is None:
            return value  # naive values are UTC already (the rule this type enforces)
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    """A team sharing the service; every job (and what hangs off it) belongs to one."""

    __tablename__ = "tenants"

    # The name people type (`vlmq keys create --tenant acme`), so it is the key too.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(
        UtcDateTime(), nullable=False, default=_utcnow, server_default=func.now()
    )
    # Per-tenant overrides of the server's defaults; None means the default.
    max_active_jobs: Mapped[int | None] = mapped_column(Integer)
    submits_per_second: Mapped[float | None] = mapped_column(Float)
    # Batch lines queued or running, and batches not yet ended, at once.
    max_queued_batch_lines: Mapped[int | None] = mapped_column(Integer)
    max_active_batches: Mapped[int | None] = mapped_column(Integer)
    # `s3://bucket/prefix` references the tenant may give as images; None allows none.
    image_url_prefixes: Mapped[list[str] | None] = mapped_column(JSON)
    # How long its jobs, batches and files are kept after they end (0: for ever), and
    # whether a job's image outlives the job; None means the server's default.
    retention_seconds: Mapped[int | None] = mapped_column(Integer)
    keep_images: Mapped[bool | None] = mapped_column(Boolean)


class ApiKey(Base):
    """A bearer key; only the SHA-256 of the secret is kept, the key itself is shown once."""

    __tablename__ = "api_keys"

    # Public part of the key (`vlmq_<id>_<secret>`): finds the row without scanning hashes.
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str | None] = mapped_column(String(200))
    secret_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    # Admin keys act across tenants (operators: dead letters, redelivery).
    is_admin: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=text("false")
    )
    created_at: Mapped[datetime] = mapped_column(
        UtcDateTime(), nullable=False, default=_utcnow, server_default=func.now()
    )
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    __table_args__ = (Index("ix_api_keys_tenant", "tenant_id"),)


class StoredFile(Base):
    """A file uploaded with POST /v1/files (batch input) or written by vlmq (batch output)."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    purpose: Mapped[str] = mapped_column(String(32), nullable=False)
    filename: Mapped[str] = mapped_column(String(512), nullable=False)
    bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    object_key: Mapped[str] = mapped_column(String(300), nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        UtcDateTime(), nullable=False, default=_utcnow, server_default=func.now()
    )
    # Its bytes are removed from this moment on (None: kept until deleted); an input file
    # is kept past it while a batch that reads it has not ended.
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Its bytes were removed by retention: reads answer 410 until the row itself goes.
    purged_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    __table_args__ = (
        Index("ix_files_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_files_expires", "expires_at",
              postgresql_where=text("purged_at IS NULL AND expires_at IS NOT NULL"),
              sqlite_where=text("purged_at IS NULL AND expires_at IS NOT NULL")),
        Index("ix_files_purged", "purged_at", postgresql_where=text("purged_at IS NOT NULL"),
              sqlite_where=text("purged_at IS NOT NULL")),
    )


class Batch(Base):
    """An OpenAI-format batch: each line of its input file becomes one job."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    endpoint: Mapped[str] = mapped_column(String(64), nullable=False)
    input_file_id: Mapped[str] = mapped_column(String(40), nullable=False)
    completion_window: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    model: Mapped[str | None] = mapped_column(String(200))
    priority: Mapped[int] = mapped_column(Integer, nullable=False)
    metadata_: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON)
    # vlmq's own: where the batch's final event goes (None for events means all of them).
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_events: Mapped[list[str] | None] = mapped_column(JSON)
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    output_file_id: Mapped[str | None] = mapped_column(String(40))
    error_file_id: Mapped[str | None] = mapped_column(String(40))
    # OpenAI's output_expires_after: the output and error files expire this long after
    # they are written (None: the tenant's retention).
    output_expires_after_seconds: Mapped[int | None] = mapped_column(Integer)
    # Lines turned into jobs so far: an interrupted expansion resumes from here.
    lines_expanded: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    total: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # Held by the process expanding or finalizing the batch; lapsed means it died.
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Unexpected failures of this batch's work so far; it is not tried again before
    # `retry_at`, and fails once there have been too many.
    work_failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0,
                                               server_default="0")
    retry_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(
        UtcDateTime(), nullable=False, default=_utcnow, server_default=func.now()
    )
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    in_progress_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finalizing_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    failed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    expired_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    cancelling_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    cancelled_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Retention removed its lines' data and its metadata: reads answer 410.
    purged_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    __table_args__ = (
        Index("ix_batches_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_batches_status", "status"),
    )


_IMAGES_TO_DROP = ("NOT keep_image AND NOT images_dropped AND finished_at IS NOT NULL "
                   "AND (image_key IS NOT NULL OR extra_images IS NOT NULL)")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("tenants.id", name="fk_jobs_tenant_id_tenants"), nullable=False
    )
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, name="job_status", native_enum=False, length=16),
        nullable=False,
        default=JobStatus.queued,
    )
    model: Mapped[str] = mapped_column(String(200), nullable=False)
    prompt: Mapped[str] = mapped_column(Text, nullable=False)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)

    # An uploaded image is in our store under image_key, checked and described below. An
    # image given by reference (https:// or s3://) is only image_url until a worker fetches it.
    image_key: Mapped[str | None] = mapped_column(String(300))
    image_url: Mapped[str | None] = mapped_column(Text)
    image_sha256: Mapped[str | None] = mapped_column(String(64))
    image_bytes: Mapped[int | None] = mapped_column(Integer)
    image_format: Mapped[str | None] = mapped_column(String(16))
    image_width: Mapped[int | None] = mapped_column(Integer)
    image_height: Mapped[int | None] = mapped_column(Integer)
    # The second and later images, in prompt order (None: one image), each
    # {"key", "url", "sha256", "bytes", "format", "width", "height"}: an upload has its key
    # (images/<id>.<n>, None once removed) and description, a reference only its url.
    # None is SQL NULL, not JSON null: the usage ledger counts the list's length in SQL.
    extra_images: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))
    # False: the image is removed from the store as soon as the job ends (resolved at
    # submit from the job's `keep_image`, else its tenant's, else the server's default).
    keep_image: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True,
                                             server_default=text("true"))
    # True once the images of a job that does not keep them are gone from the store.
    images_dropped: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False,
                                                 server_default=text("false"))

    # A line of a batch: which batch, its line number (0-based) and the client's custom_id.
    batch_id: Mapped[str | None] = mapped_column(
        String(40), ForeignKey("batches.id", name="fk_jobs_batch_id_batches", ondelete="CASCADE")
    )
    batch_line: Mapped[int | None] = mapped_column(Integer)
    custom_id: Mapped[str | None] = mapped_column(String(512))

    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # 0 runs first, 9 last; honoured by the broker and by vLLM's scheduler.
    priority: Mapped[int] = mapped_column(Integer, nullable=False, default=5, server_default="5")
    # A job still queued at this moment expires instead of running.
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Workers claim a queued job only from this moment on; a retry's backoff sets it ahead.
    runnable_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Engine crashes this job was present at; from two on it runs alone (poison isolation).
    engine_failures: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default="0"
    )
    # Renewed by the worker running the job; a lapsed lease means the worker is gone.
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(
        UtcDateTime(), nullable=False, default=_utcnow, server_default=func.now()
    )
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    result_text: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    # Of prompt_tokens, those that stand for the image; and the job's share of the wall
    # time of the engine steps it was in (the usage ledger sums both).
    image_tokens: Mapped[int | None] = mapped_column(Integer)
    engine_seconds: Mapped[float | None] = mapped_column(Float)

    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)

    # Where the terminal event goes; webhook_events None means every terminal event.
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_events: Mapped[list[str] | None] = mapped_column(JSON)
    # Retention or a DELETE removed its prompt, image, result and deliveries; what is left
    # (id, status, timestamps) answers 410 until the row itself goes.
    purged_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    __table_args__ = (
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_created_id", "created_at", "id"),
        # Idempotency keys are the client's own names, so two tenants may use the same one.
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        # The active-jobs quota counts these.
        Index(
            "ix_jobs_tenant_active", "tenant_id",
            postgresql_where=text("status IN ('queued', 'running')"),
            sqlite_where=text("status IN ('queued', 'running')"),
        ),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        # Claims take the queued jobs of one model in priority order, many at a time.
        Index(
            "ix_jobs_claim", "model", "priority", "created_at",
            postgresql_where=text("status = 'queued'"), sqlite_where=text("status = 'queued'"),
        ),
        Index("ix_jobs_status_expires", "status", "expires_at"),
        # A line becomes one job however often its expansion is retried.
        UniqueConstraint("batch_id", "batch_line", name="uq_jobs_batch_line"),
        Index("ix_jobs_batch_status", "batch_id", "status"),
        # Retention: each tenant's ended jobs by when they ended (finished_at is set exactly
        # when a job ends), and the stripped rows by when they were stripped.
        Index(
            "ix_jobs_retention", "tenant_id", "finished_at",
            postgresql_where=text("finished_at IS NOT NULL AND purged_at IS NULL"),
            sqlite_where=text("finished_at IS NOT NULL AND purged_at IS NULL"),
        ),
        Index("ix_jobs_purged", "purged_at", postgresql_where=text("purged_at IS NOT NULL"),
              sqlite_where=text("purged_at IS NOT NULL")),
        # Ended jobs whose images go at once, any of them an upload (the first may be a
        # reference and the later ones uploads).
        Index(
            "ix_jobs_image_drop", "finished_at",
            postgresql_where=text(_IMAGES_TO_DROP), sqlite_where=text(_IMAGES_TO_DROP),
        ),
    )


class UsageHour(Base):
    """The usage ledger: what one tenant's jobs on one model did in one hour.

    Counters only grow, in the transaction that records each outcome, so they always equal
    what the jobs table says happened; they outlive job deletion and retention. Each writer
    adds to its own `shard` of the hour, so concurrent API processes and workers never wait
    on one row; readers sum the shards.
    """

    __tablename__ = "usage_hours"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UtcDateTime(), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    accepted: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0,
                                          server_default="0")
    succeeded: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0,
                                           server_default="0")
    failed: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0,
                                        server_default="0")
    cancelled: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0,
                                           server_default="0")
    expired: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0,
                                         server_default="0")
    images: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0,
                                        server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0,
                                               server_default="0")
    image_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0,
                                              server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0,
                                                   server_default="0")
    engine_seconds: Mapped[float] = mapped_column(Float, nullable=False, default=0.0,
                                                  server_default="0")

    __table_args__ = (Index("ix_usage_hours_hour", "hour"),)


class Worker(Base):
    """A running worker process, kept fresh by its heartbeat; `GET /v1/models` reads these."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), nullable=False)
    engine: Mapped[str] = mapped_column(String(32), nullable=False)
    queue: Mapped[str] = mapped_column(String(300), nullable=False)
    max_batch_size: Mapped[int] = mapped_column(Integer, nullable=False)
    started_at: Mapped[datetime] = mapped_column(
        UtcDateTime(), nullable=False, default=_utcnow, server_default=func.now()
    )
    last_seen_at: Mapped[datetime] = mapped_column(
        UtcDateTime(), nullable=False, default=_utcnow, server_default=func.now()
    )

    __table_args__ = (Index("ix_workers_model_seen", "model", "last_seen_at"),)


class ModelColdStart(Base):
    """A model's last measured cold start: from a worker process's start to its first claim
    (imports, engine load, warm-up). Kept when the workers are gone: a model scaled to zero
    is when a queued job's estimate needs it."""

    __tablename__ = "model_cold_starts"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    seconds: Mapped[float] = mapped_column(Float, nullable=False)
    measured_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)


class WebhookDelivery(Base):
    """One terminal event of one job on its way to the job's webhook URL."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # A job's event, or (with job_id None) a batch's.
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="CASCADE")
    )
    batch_id: Mapped[str | None] = mapped_column(
        String(40),
        ForeignKey("batches.id", name="fk_webhook_deliveries_batch_id_batches",
                   ondelete="CASCADE"),
    )
    event: Mapped[str] = mapped_column(String(32), nullable=False)
    url: Mapped[str] = mapped_column(Text, nullable=False)
    # The webhook-id header: one per event, the same on every attempt, so receivers dedupe.
    message_id: Mapped[str] = mapped_column(String(64), nullable=False)
    # Written by the first attempt and sent unchanged by every later one.
    payload: Mapped[str | None] = mapped_column(Text)
    status: Mapped[DeliveryStatus] = mapped_column(
        Enum(DeliveryStatus, name="delivery_status", native_enum=False, length=16),
        nullable=False,
        default=DeliveryStatus.pending,
    )
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # Attempts since the delivery was created or last replayed; picks the retry delay.
    round_attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Held by the sender making an attempt; a lapsed lease means that sender died.
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # When a message for the due attempt went to the webhook queue.
    dispatched_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(
        UtcDateTime(), nullable=False, default=_utcnow, server_default=func.now()
    )
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("message_id", name="uq_webhook_deliveries_message_id"),
        Index("ix_webhook_deliveries_job", "job_id"),
        Index("ix_webhook_deliveries_batch", "batch_id"),
        Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
    )


class WebhookAttempt(Base):
    """The ledger: one row per HTTP attempt, written when it starts and when it ends."""

    __tablename__ = "webhook_attempts"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), nullable=False
    )
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    response_excerpt: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "number"),)
