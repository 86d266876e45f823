"""What the API returns, as typed objects."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "expired"})


@dataclass(frozen=True)
class JobResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    # For a response_format job, the text parsed as JSON; None otherwise.
    json: Any = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobResult:
        """Fields a newer server adds are ignored."""
        return cls(text=data["text"], prompt_tokens=data["prompt_tokens"],
                   completion_tokens=data["completion_tokens"],
                   finish_reason=data["finish_reason"], json=data.get("json"))


@dataclass(frozen=True)
class JobError:
    code: str
    message: str


@dataclass(frozen=True)
class Job:
    id: str
    status: str
    model: str
    prompt: str
    params: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    priority: int
    result: JobResult | None
    error: JobError | None
    image_url: str | None = None
    batch_id: str | None = None
    custom_id: str | None = None
    queue_position: int | None = None
    eta_seconds: float | None = None
    waiting_for_worker: bool | None = None
    # Set by `submit`: the server returned the job an earlier submit with the same
    # Idempotency-Key made (200, Idempotent-Replayed) rather than a new one (202).
    replayed: bool = False

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_response(cls, response: Any) -> Job:
        """The job a submit answered with, marked `replayed` when it was an earlier one."""
        replayed = (response.status_code == 200
                    or response.headers.get("idempotent-replayed", "").lower() == "true")
        return replace(cls.from_json(response.json()), replayed=replayed)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        result, error = data.get("result"), data.get("error")
        return cls(
            id=data["id"], status=data["status"], model=data["model"], prompt=data["prompt"],
            params=data.get("params") or {}, created_at=_when(data["created_at"]),
            started_at=_maybe_when(data.get("started_at")),
            finished_at=_maybe_when(data.get("finished_at")),
            attempts=data.get("attempts", 0), priority=data.get("priority", 5),
            result=JobResult.from_json(result) if result else None,
            error=JobError(code=error["code"], message=error["message"]) if error else None,
            image_url=data.get("image_url"), batch_id=data.get("batch_id"),
            custom_id=data.get("custom_id"), queue_position=data.get("queue_position"),
            eta_seconds=data.get("eta_seconds"),
            waiting_for_worker=data.get("waiting_for_worker"),
        )


class ApiError(Exception):
    """A refusal that retrying will not change (4xx), or retries that ran out."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _maybe_when(text: str | None) -> datetime | None:
    return _when(text) if text else None
