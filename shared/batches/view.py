"""The public batch object (OpenAI's shape): what `GET /v1/batches/{id}` returns and what
batch webhooks carry. Here rather than in api/ because the control process, which ends
batches, builds their webhook payloads in the transaction that ends them."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel

from shared.batches.repo import Counts
from shared.models import Batch


def _seconds(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


class BatchError(BaseModel):
    code: str | None
    line: int | None
    message: str | None
    param: str | None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: Literal["validating", "failed", "in_progress", "finalizing", "completed",
                    "expired", "cancelling", "cancelled"]
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, str] | None

    @classmethod
    def from_row(cls, batch: Batch, counts: Counts) -> BatchObject:
        errors: Any = None
        if batch.errors:
            errors = BatchErrors(data=[BatchError(**e) for e in batch.errors])
        return cls(
            id=batch.id, endpoint=batch.endpoint, model=batch.model, errors=errors,
            input_file_id=batch.input_file_id, completion_window=batch.completion_window,
            status=batch.status,  # type: ignore[arg-type]
            output_file_id=batch.output_file_id, error_file_id=batch.error_file_id,
            created_at=_seconds(batch.created_at) or 0,
            in_progress_at=_seconds(batch.in_progress_at),
            expires_at=_seconds(batch.expires_at),
            finalizing_at=_seconds(batch.finalizing_at),
            completed_at=_seconds(batch.completed_at), failed_at=_seconds(batch.failed_at),
            expired_at=_seconds(batch.expired_at), cancelling_at=_seconds(batch.cancelling_at),
            cancelled_at=_seconds(batch.cancelled_at),
            request_counts=RequestCounts(total=counts.total, completed=counts.completed,
                                         failed=counts.failed),
            metadata=batch.metadata_,
        )


def batch_event_payload(batch: BatchObject, event: str, *, public_url: str | None,
                        max_bytes: int) -> str:
    """A batch webhook's body: the batch as it ended, with a link to it. Validation errors
    are the only part that can grow; past `max_bytes` the list is cut and says so."""
    data: dict[str, Any] = batch.model_dump(mode="json")
    data["url"] = f"{(public_url or '').rstrip('/')}/v1/batches/{batch.id}"
    data["truncated"] = False
    envelope = {"type": event, "timestamp": datetime.now(timezone.utc).isoformat(),
                "data": data}
    body = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)
    errors = (data.get("errors") or {}).get("data") or []
    while len(body.encode()) > max_bytes and errors:
        del errors[len(errors) // 2:]
        data["truncated"] = True
        body = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)
    return body
