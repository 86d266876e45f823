"""Bodies of the OpenAI-compatible routes, in the shapes of the official client's types."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.batches.view import BatchObject
from shared.models import StoredFile
from shared.net.urls import MAX_URL_LENGTH
from shared.webhooks.events import BatchEvent

# A batch's metadata, as at OpenAI: at most 16 pairs, keys of at most 64 characters and
# values of at most 512.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
Metadata = dict[Annotated[str, Field(max_length=MAX_METADATA_KEY_CHARS)],
                Annotated[str, Field(max_length=MAX_METADATA_VALUE_CHARS)]]
# More than there are batch events; a list only repeats them past that.
MAX_BATCH_WEBHOOK_EVENTS = 16
# OpenAI's bounds on a file's `expires_after` and a batch's `output_expires_after`: from one
# hour to 30 days after the anchor, the file's creation (the only anchor there is).
EXPIRES_AFTER_ANCHORS = ("created_at",)
MIN_EXPIRES_AFTER_SECONDS = 3600
MAX_EXPIRES_AFTER_SECONDS = 30 * 86400


def _seconds(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None

    @classmethod
    def from_row(cls, row: StoredFile) -> FileObject:
        return cls(id=row.id, bytes=row.bytes, created_at=_seconds(row.created_at) or 0,
                   filename=row.filename, purpose=row.purpose,
                   expires_at=_seconds(row.expires_at))


_ANCHOR_DOC = "what `seconds` count from: `created_at`, the file's creation, the only anchor"
_SECONDS_DOC = (f"seconds after the anchor, from {MIN_EXPIRES_AFTER_SECONDS} (1 hour) to "
                f"{MAX_EXPIRES_AFTER_SECONDS} (30 days)")
# The bounds are documented here and checked by the services (api/services/files.py), so
# a value out of them is a 400 `invalid_expires_after`, as OpenAI answers, not a 422.
_ANCHOR_SCHEMA = {"enum": list(EXPIRES_AFTER_ANCHORS)}
_SECONDS_SCHEMA = {"minimum": MIN_EXPIRES_AFTER_SECONDS, "maximum": MAX_EXPIRES_AFTER_SECONDS}


class ExpiresAfter(BaseModel):
    """OpenAI's expiry policy for a file: it is removed `seconds` after its `anchor`."""

    model_config = ConfigDict(extra="forbid")

    anchor: str = Field(max_length=64, description=_ANCHOR_DOC,
                        json_schema_extra=_ANCHOR_SCHEMA)
    seconds: int = Field(strict=True, description=_SECONDS_DOC,
                         json_schema_extra=_SECONDS_SCHEMA)


class FileUpload(BaseModel):
    """Multipart form of POST /v1/files (documents the form; the route reads it itself)."""

    file: bytes = Field(description="the JSONL file, one request per line")
    purpose: Literal["batch"]
    # The openai client sends `expires_after` as these two fields; without them the file
    # expires after its tenant's retention (VLMQ_RETENTION_SECONDS).
    expires_after_anchor: Literal["created_at"] | None = Field(
        default=None, alias="expires_after[anchor]", description=_ANCHOR_DOC)
    expires_after_seconds: int | None = Field(
        default=None, alias="expires_after[seconds]", description=_SECONDS_DOC,
        ge=MIN_EXPIRES_AFTER_SECONDS, le=MAX_EXPIRES_AFTER_SECONDS)


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(max_length=40)
    endpoint: str
    completion_window: str = Field(
        default="24h", description="24h as at OpenAI; vlmq also takes e.g. 90s, 30m, 3h, 7d"
    )
    metadata: Metadata | None = Field(default=None, max_length=MAX_METADATA_PAIRS)
    # vlmq's own (the openai client sends them with extra_body): a signed webhook when the
    # batch ends, through the same ledger as jobs' webhooks.
    webhook_url: str | None = Field(default=None, max_length=MAX_URL_LENGTH)
    webhook_events: list[BatchEvent] | None = Field(
        default=None, min_length=1, max_length=MAX_BATCH_WEBHOOK_EVENTS,
        description="default: every batch event",
    )
    output_expires_after: ExpiresAfter | None = Field(
        default=None, description="when the output and error files expire, counted from "
        "each file's creation; default: the tenant's retention",
    )


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool
