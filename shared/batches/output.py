"""A batch's output and error lines, in OpenAI's JSONL shapes, matched by custom_id.

A succeeded line goes to the output file with its `chat.completion`; a failed line goes
to the error file with the error POST /v1/jobs would give (status 400 for what the
request got wrong, 500 for what went wrong here); a line that never ran because the
batch was cancelled, expired or failed has no response, only `batch_cancelled`,
`batch_expired` or `batch_failed`.
"""

from __future__ import annotations

import json
from typing import Any

from shared.chat import completion_object, error_object
from shared.jobs.status import JobStatus
from shared.models import Job

# Failures that are the service's, not the request's.
_SERVER_SIDE = {"engine_error", "job_timeout", "storage_error", "internal_error", "worker_lost",
                "worker_stopped"}
# Why a line never ran: its batch ended first.
_NOT_RUN = {
    "batch_cancelled": "the batch was cancelled before this request ran",
    "batch_expired": "the batch expired before this request ran",
    "batch_failed": "the batch failed before this request ran",
}


def line_for_job(job: Job) -> tuple[bool, str]:
    """(is an output line, the JSONL line) for a line's job."""
    request_id = job.id.hex
    line: dict[str, Any] = {"id": f"batch_req_{request_id}", "custom_id": job.custom_id}
    status = JobStatus(job.status)
    if status == JobStatus.succeeded:
        body = completion_object(
            job_id=request_id, model=job.model, created=int(job.created_at.timestamp()),
            text=job.result_text or "", finish_reason=job.finish_reason,
            prompt_tokens=job.prompt_tokens or 0, completion_tokens=job.completion_tokens or 0,
        )
        line.update(response={"status_code": 200, "request_id": request_id, "body": body},
                    error=None)
        return True, _dump(line)
    if status in (JobStatus.cancelled, JobStatus.expired):
        code = job.error_code if job.error_code in _NOT_RUN else (
            "batch_cancelled" if status == JobStatus.cancelled else "batch_expired")
        return False, missing_line(job.custom_id or "", code, request_id)
    code = job.error_code or "internal_error"
    line.update(
        response={"status_code": status_code_for(code),
                  "request_id": request_id,
                  "body": error_object(code, job.error_message or code)},
        error=None,
    )
    return False, _dump(line)


def status_code_for(error_code: str) -> int:
    """400 for what the request got wrong, 500 for what went wrong here."""
    return 500 if error_code in _SERVER_SIDE else 400


def missing_line(custom_id: str, code: str, request_id: str) -> str:
    """An error line for a request that did not run: its batch ended first."""
    return _dump({"id": f"batch_req_{request_id}", "custom_id": custom_id, "response": None,
                  "error": {"code": code, "message": _NOT_RUN[code]}})


def _dump(line: dict[str, Any]) -> str:
    return json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n"
