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
                   filename=row.filename, purpose=row.purpose)


class FileUpload(BaseModel):
    """Multipart form of POST /v1/files (documents the form; the route reads it itself)."""

    file: bytes = Field(description="the JSONL file, one request per line")
    purpose: Literal["batch"]


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


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool
