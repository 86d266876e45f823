"""The settings, from `VLMQ_*` variables, in one section per component.

Each section is a `BaseSettings` of its own with the `VLMQ_` prefix, so it can be read from
the environment alone, and a component takes the section it reads. `Settings` is every
section at once (by inheritance, so a `Settings` is accepted wherever a section is): each
entry point builds one and passes it down, and whatever reads several sections takes it whole.
A field's environment name is `VLMQ_` + its name, whichever section holds it.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from enum import StrEnum
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared import home


class EngineKind(StrEnum):
    vllm = "vllm"
    transformers = "transformers"
    # No model: a fixed reply at the next step; for load tests and the benchmark's ceiling.
    echo = "echo"


class _Section(BaseSettings):
    """One component's settings; every section reads `VLMQ_<FIELD>`, so a variable's name
    does not depend on which section holds it."""

    model_config = SettingsConfigDict(env_prefix="VLMQ_", extra="ignore")


# The defaults of the stores are the embedded, server-less setup of `vlmq up` and `vlmq demo`,
# all under one folder, the vlmq home (shared/home.py: VLMQ_HOME, else the project's .vlmq).


class DatabaseSettings(_Section):
    """Postgres (SQLite when embedded): the queue of record."""

    database_url: str = Field(default_factory=home.default_database_url)


class BrokerSettings(_Section):
    """The Celery broker: wake-ups, the webhook queue, the abort channel, rate windows."""

    broker_url: str = "filesystem://"
    broker_folder: Path = Field(default_factory=home.default_broker_folder)
    queue_prefix: str = "vlmq"
    # Celery task events for every job (received, started, succeeded, failed, revoked), so
    # Flower's task list shows them: shared/task_events.py.
    task_events: bool = True

    @property
    def abort_channel(self) -> str:
        return f"{self.queue_prefix}.abort"

    @property
    def webhook_queue(self) -> str:
        return f"{self.queue_prefix}.webhooks"


class StoreSettings(_Section):
    """The object store of images and files; its S3 client also reads s3:// image references."""

    store_url: str = Field(default_factory=home.default_store_url)
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_create_bucket: bool = True


class EngineSettings(_Section):
    """What a GPU worker serves and how it runs it."""

    model: str = "tiny-qwen2-vl"
    model_path: str = Field(default_factory=home.default_model_path)
    # vLLM is what the worker exists for; the others are chosen explicitly, never a fallback.
    engine: EngineKind = EngineKind.vllm

    # Batching: how many jobs the engine runs together and how long it gathers a batch;
    # a worker holds up to max_in_flight jobs (claimed, preparing or in the engine),
    # twice the batch by default so the next batch is ready when a slot frees.
    max_batch_size: int = 64
    max_wait_ms: int = 10
    max_in_flight: int | None = None
    # Fetch and decode of claimed jobs' images run on this many threads per worker.
    prepare_threads: int = 4
    # Preprocessing bound applied by the worker before inference.
    worker_max_pixels: int = 1024 * 1024

    # vLLM engine settings (ignored by the transformers engine).
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.9
    dtype: str = "auto"
    quantization: str | None = None
    max_num_seqs: int = 64
    min_pixels: int | None = None
    max_pixels: int | None = None
    # Images vLLM admits in one prompt: at least VLMQ_MAX_IMAGES_PER_JOB, or a job with
    # more is refused at the engine (invalid_request). vLLM profiles memory for this many.
    limit_mm_per_prompt: int = 8
    enforce_eager: bool = False
    cpu_kvcache_gib: int = 1
    # A vLLM outside the tested releases (worker/engines/vllm_version.py) stops the worker;
    # true runs it anyway, with a warning, for whoever knowingly tries a newer one.
    allow_untested_vllm: bool = False
    # The echo engine plays engine failures for prompts marked [echo:crash] / [echo:hang].
    echo_faults: bool = False
    # Above 0 the echo engine simulates a GPU engine: steps of this many milliseconds, at
    # most max_num_seqs sequences, each finishing after its max_tokens steps.
    echo_step_ms: float = Field(default=0.0, ge=0)
    # Benchmarks only: generate exactly max_tokens so runs are comparable.
    ignore_eos: bool = False

    @property
    def in_flight_limit(self) -> int:
        return self.max_in_flight or 2 * self.max_batch_size


class LimitsSettings(_Section):
    """What a submission may ask for, and how much a tenant may have at once."""

    # Models the API takes jobs for even when no worker is live (they wait in the model's
    # queue). VLMQ_MODEL and every model with a live worker are always accepted.
    accepted_models: list[str] = []

    # Upload limits, checked before anything is stored or enqueued.
    max_upload_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_image_side: int = 16_384
    # Pillow's format names; HEIF covers iPhones' HEIC (shared/images.py opens it).
    allowed_formats: list[str] = ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF"]
    max_prompt_chars: int = 16_000
    # Images one job may hold (`images: [...]`, repeated `image` parts, image_url parts).
    # Each image is held to the limits above; together a job's images are held to these
    # totals, which also size the request body limit (api/app.py).
    max_images_per_job: int = Field(default=8, ge=1, le=64)
    max_job_image_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    max_job_image_pixels: int = Field(default=100_000_000, ge=1)

    # Decoded pixels that one API process may hold at once while checking uploads; an
    # upload that cannot get its share within the wait is answered 503 with Retry-After.
    api_image_memory_bytes: int = Field(default=1024 * 1024 * 1024, ge=1)
    api_image_memory_wait_seconds: float = Field(default=10.0, ge=0)

    # Generation defaults and bounds.
    default_max_tokens: int = 256
    max_tokens_limit: int = 4096

    # Per-tenant limits unless `vlmq keys limits` sets a tenant's own; 0 = no limit.
    # Active jobs are queued + running; submissions are counted in a sliding one-second
    # window shared by every API process (in Redis; per process with the filesystem broker).
    tenant_max_active_jobs: int = Field(default=10_000, ge=0)
    tenant_submits_per_second: float = Field(default=100.0, ge=0)
    # Batch work a tenant may have at once: lines queued or running (a validated batch's
    # lines count from validation, before they are expanded into jobs), and batches not
    # yet ended. POST /v1/batches is refused with 429 at either; 0 = no limit.
    tenant_max_queued_batch_lines: int = Field(default=100_000, ge=0)
    tenant_max_active_batches: int = Field(default=10, ge=0)

    # An upload's format is compared with Pillow's name for it, so a list naming "heic" or
    # "HEIC" (the name users know iPhone photos by) must not refuse them.
    @field_validator("allowed_formats")
    @classmethod
    def _format_names(cls, formats: list[str]) -> list[str]:
        return [{"HEIC": "HEIF"}.get(f.upper(), f.upper()) for f in formats]


class LifecycleSettings(_Section):
    """How jobs and workers live: deadlines, retries, leases, claiming, sweeping, liveness."""

    # A queued job older than this expires instead of running (unset = never); jobs may ask
    # for their own `max_queue_seconds`.
    max_queue_seconds: int | None = None
    # Transient failures (engine crash, storage or database errors, a lost worker) are
    # retried with exponential backoff until a job has run max_attempts times.
    max_attempts: int = 3
    retry_backoff_seconds: float = 2.0
    retry_backoff_max_seconds: float = 300.0
    # A running job's lease is renewed by its worker; when it lapses the job is requeued.
    lease_seconds: int = 30
    # The longest a job may spend in the engine; past it the job is aborted and retried.
    max_job_seconds: int = 600
    # Workers claim from Postgres when a message wakes them, and on their own this often.
    claim_poll_seconds: float = 1.0
    # How often the sweeper (one process at a time) reaps lapsed leases and expires jobs.
    sweep_seconds: float = 1.0
    # On SIGTERM a worker finishes what it holds for this long, then hands the rest back.
    shutdown_grace_seconds: float = 10.0
    heartbeat_seconds: float = 5.0
    # A worker whose heartbeat is older than this is not live.
    worker_ttl_seconds: float = 20.0


class ImageFetchSettings(_Section):
    """Images given by reference (image_url), checked by the API and fetched by workers."""

    # Images given by reference (image_url) are fetched by the worker that runs the job,
    # then checked like uploads. s3:// references are read with the store's S3 settings, so
    # a tenant may name only objects under the s3:// prefixes an operator allowed it
    # (`vlmq keys limits --image-url-prefix`), and only within the server's outer bound:
    # the store's own bucket (outside its prefix, which holds the server's own objects) or
    # one of these; any other bucket is refused, as the server's credentials may reach
    # buckets that clients must not read through it.
    image_fetch_allowed_buckets: list[str] = []
    # The whole fetch, connect to last byte, redirects included; a timeout is retried.
    image_fetch_timeout_seconds: float = Field(default=15.0, gt=0)
    # Local development only, as for webhooks: plain http, and networks (CIDR) exempt from
    # the refusal of private, loopback and link-local addresses.
    image_fetch_allow_http: bool = False
    image_fetch_allowed_networks: list[str] = []

    # Named apart from WebhookSettings' validator: in Settings, which inherits both, one
    # name would hide the other and leave its field unchecked.
    @field_validator("image_fetch_allowed_networks")
    @classmethod
    def _image_fetch_networks(cls, networks: list[str]) -> list[str]:
        return _cidr_networks(networks)


class WebhookSettings(_Section):
    """Webhook signing, the URL guard, delivery and its retries."""

    # Every delivery carries one signature per secret, so a new secret can be added before
    # an old one is removed (rotation). Generate one with `vlmq webhook-secret`.
    webhook_secrets: list[str] = []
    # Local development only: plain http, and networks (CIDR) exempt from the refusal of
    # private, loopback and link-local addresses.
    webhook_allow_http: bool = False
    webhook_allowed_networks: list[str] = []
    # Seconds to wait after the 1st, 2nd, ... failed attempt; one more attempt than entries.
    webhook_retry_schedule: list[float] = [5, 300, 1800, 7200, 18000, 36000, 36000]
    webhook_retry_jitter: float = Field(default=0.2, ge=0, le=1)
    webhook_retry_after_max_seconds: float = 86_400
    webhook_timeout_seconds: float = 15.0
    webhook_max_response_bytes: int = 64 * 1024
    webhook_max_payload_bytes: int = 16 * 1024
    webhook_concurrency: int = 16
    # How often a webhook worker looks for deliveries that are due.
    webhook_poll_seconds: float = 1.0
    # Base of links in webhook payloads, e.g. https://vlmq.example.com; relative when unset.
    public_url: str | None = None

    @field_validator("webhook_secrets")
    @classmethod
    def _whsec_secrets(cls, secrets: list[str]) -> list[str]:
        for secret in secrets:
            if not secret.startswith("whsec_") or len(_whsec_key(secret)) < 24:
                raise ValueError(
                    "each webhook secret is whsec_ followed by base64 of at least 24 random "
                    "bytes; `vlmq webhook-secret` prints one"
                )
        return secrets

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _webhook_networks(cls, networks: list[str]) -> list[str]:
        return _cidr_networks(networks)


class BatchSettings(_Section):
    """Files and batches (the OpenAI-compatible bulk path)."""

    # A batch's lines are jobs at batch_priority, below interactive jobs' default of 5, so
    # interactive work overtakes them.
    max_file_bytes: int = Field(default=200 * 1024 * 1024, ge=1)
    batch_max_lines: int = Field(default=50_000, ge=1)
    batch_priority: int = Field(default=7, ge=0, le=9)
    # The process expanding or finalizing a batch holds it this long between renewals;
    # a batch whose holder died is taken up by another control process after it lapses.
    batch_lease_seconds: float = Field(default=30.0, gt=0)
    # How often a control process looks for batch work (expansion, completion, expiry); a
    # batch ends at most this long after its last line. A pass is one indexed query.
    batch_poll_seconds: float = Field(default=0.25, gt=0)
    # Threads a control process checks a chunk's lines and stores their images on.
    batch_expand_threads: int = Field(default=8, ge=1, le=64)
    # A batch whose work raises unexpectedly is tried again after batch_retry_seconds,
    # doubling each time (up to 5 minutes), while other batches go on; after
    # batch_work_tries failures in a row it fails alone.
    batch_work_tries: int = Field(default=5, ge=1)
    batch_retry_seconds: float = Field(default=2.0, gt=0)


class RetentionSettings(_Section):
    """How long what vlmq stores is kept, and the passes that remove it (the sweeper's)."""

    # Jobs (prompt, image, result, deliveries), batches and files are kept this long after
    # they end, unless their tenant has its own (`vlmq keys limits --retention`); 0 keeps
    # them for ever. A file's own `expires_after` and a batch's `output_expires_after` win.
    retention_seconds: int = Field(default=30 * 86400, ge=0)
    # False: a job's uploaded image is removed as soon as the job ends (a job's
    # `keep_image` and its tenant's setting win over this).
    keep_images: bool = True
    # A removed job, batch or file still answers 410 `expired_data` (its id, status and
    # timestamps) for this long; then its row goes and it is simply not found.
    tombstone_seconds: int = Field(default=7 * 86400, ge=0)
    # How often the sweeper looks for what is due, and how many of each it removes per
    # transaction (objects first, then rows, so an interrupted pass leaves nothing behind).
    retention_sweep_seconds: float = Field(default=5.0, gt=0)
    retention_chunk: int = Field(default=500, ge=1, le=10_000)
    # Objects in the store with no row (an upload whose insert never committed) are removed
    # by a pass this often, once older than the safety window; 0 turns the pass off.
    orphan_sweep_seconds: float = Field(default=3600.0, ge=0)
    orphan_min_age_seconds: float = Field(default=3600.0, gt=0)


class ApiSettings(_Section):
    """The HTTP front: `vlmq api` (and where `vlmq flower` listens), auth, request bounds."""

    # Every /v1 request carries `Authorization: Bearer <key>` (keys: `vlmq keys create`).
    # Turned off, every caller is an admin of the tenant `default`: for local development
    # only, and logged as a warning at start.
    auth_disabled: bool = False
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # Slow or oversized requests hold a connection (and memory) each: a request's head must
    # arrive whole within api_header_timeout_seconds of its first byte, and while its body
    # is read, no gap between chunks may exceed api_body_timeout_seconds (408, then close).
    api_header_timeout_seconds: float = Field(default=10.0, gt=0)
    api_body_timeout_seconds: float = Field(default=30.0, gt=0)
    # Request line and headers together, and the number of headers; over either is a 431.
    api_max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    api_max_headers: int = Field(default=100, ge=1)
    # Long polls wait at most long_poll_max_seconds. They wake on Postgres NOTIFY; this
    # often, one query also checks every waited-on job, in case a notification was missed
    # (e.g. while the listener reconnected).
    long_poll_max_seconds: int = 60
    long_poll_fallback_seconds: float = 5.0
    # POST /v1/chat/completions waits this long for its job, then answers 504 with its id.
    chat_wait_seconds: float = Field(default=60.0, gt=0)
    # "user:password" entries. Flower's dashboard can revoke tasks and shut workers down, so
    # `vlmq flower` refuses to start without them unless told --no-auth.
    flower_basic_auth: list[str] = []


class MetricsSettings(_Section):
    """Where each process serves Prometheus metrics."""

    metrics_port: int = Field(default=0, description="worker Prometheus port; 0 = off")
    api_metrics_port: int = Field(default=0, description="API Prometheus port; 0 = off")
    # Where every process serves its metrics. Labels carry tenant names, so loopback unless
    # the scraper is elsewhere (docker-compose sets 0.0.0.0 inside its private network).
    metrics_host: str = "127.0.0.1"


class Settings(
    DatabaseSettings,
    BrokerSettings,
    StoreSettings,
    EngineSettings,
    LimitsSettings,
    LifecycleSettings,
    ImageFetchSettings,
    WebhookSettings,
    BatchSettings,
    RetentionSettings,
    ApiSettings,
    MetricsSettings,
):
    """Every section: what an entry point builds, and what a reader of several sections takes."""

    # Broker and engine together: the queue a worker consumes.
    @property
    def queue_name(self) -> str:
        return queue_for_model(self.queue_prefix, self.model)


SECTIONS: tuple[type[BaseSettings], ...] = (
    DatabaseSettings,
    BrokerSettings,
    StoreSettings,
    EngineSettings,
    LimitsSettings,
    LifecycleSettings,
    ImageFetchSettings,
    WebhookSettings,
    BatchSettings,
    RetentionSettings,
    ApiSettings,
    MetricsSettings,
)


def _cidr_networks(networks: list[str]) -> list[str]:
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError as exc:
            raise ValueError(f"{network!r} is not a network such as 127.0.0.1/32") from exc
    return networks


def _whsec_key(secret: str) -> bytes:
    try:
        key = secret.removeprefix("whsec_")
        return base64.b64decode(key + "=" * (-len(key) % 4), validate=True)
    except (binascii.Error, ValueError):
        return b""


def queue_for_model(prefix: str, model: str) -> str:
    return f"{prefix}.jobs.{model}"
