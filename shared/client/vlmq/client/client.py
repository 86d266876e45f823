"""`Client` and `AsyncClient`: submit, get, wait (long poll), cancel, iter_jobs, and batch
helpers, with retries on 429/502/503/504 and connection errors that honour Retry-After.

    from vlmq.client import Client

    with Client("http://localhost:8000", api_key=KEY) as vlmq:
        job = vlmq.submit("What is in this picture?", image=Path("cat.jpg"), max_tokens=64)
        job = vlmq.wait(job.id)
        print(job.result.text if job.result else job.error)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from vlmq.client import calls
from vlmq.client.types import ApiError, Job

__all__ = ["ApiError", "AsyncClient", "Client", "Job", "verify_webhook"]

_LONG_POLL_SECONDS = 60.0


class _Settings:
    def __init__(self, base_url: str, api_key: str | None, timeout: float, max_retries: int,
                 backoff_seconds: float, backoff_max_seconds: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff_seconds
        self.backoff_max = backoff_max_seconds


class Client:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, *,
                 timeout: float = 60.0, max_retries: int = 8, backoff_seconds: float = 0.5,
                 backoff_max_seconds: float = 30.0) -> None:
        self._s = _Settings(base_url, api_key, timeout, max_retries, backoff_seconds,
                            backoff_max_seconds)
        self._http = httpx.Client(base_url=self._s.base_url, headers=self._s.headers)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: calls.Call) -> httpx.Response:
        s = self._s
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, call.path,
                                              **calls.request_kwargs(call, s.timeout))
            except httpx.TransportError:
                if attempt >= s.max_retries:
                    raise
                time.sleep(calls.retry_delay(attempt, None, s.backoff, s.backoff_max))
            else:
                if not calls.should_retry(response) or attempt >= s.max_retries:
                    return calls.checked(response)
                time.sleep(calls.retry_delay(attempt, response, s.backoff, s.backoff_max))
            attempt += 1

    def submit(self, prompt: str, image: bytes | str | Path | None = None, **fields: Any) -> Job:
        """One job; fields are `image_url`, `model`, generation and scheduling fields,
        `webhook_url`, `webhook_events` and `idempotency_key`."""
        return Job.from_response(self._send(calls.submit(prompt, image, **fields)))

    def get(self, job_id: str) -> Job:
        return Job.from_json(self._send(calls.get(job_id)).json())

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once it ends (long polls, no busy loop), or as it stands at `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _LONG_POLL_SECONDS if deadline is None else deadline - time.monotonic()
            job = Job.from_json(self._send(calls.get(job_id, max(0.0, min(left, 60)))).json())
            if job.done or (deadline is not None and time.monotonic() >= deadline):
                return job

    def cancel(self, job_id: str) -> Job:
        try:
            return Job.from_json(self._send(calls.cancel(job_id)).json())
        except ApiError as exc:
            if exc.code != "job_finished":
                raise
            return self.get(job_id)  # already ended (or this is a retry of a cancel that took)

    def iter_jobs(self, *, status: str | None = None, model: str | None = None,
                  batch_id: str | None = None, page_size: int = 100) -> Iterator[Job]:
        cursor = None
        while True:
            page = self._send(calls.list_jobs(cursor, page_size, status=status, model=model,
                                              batch_id=batch_id)).json()
            yield from (Job.from_json(j) for j in page["data"])
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def upload_file(self, content: bytes | str | Path, purpose: str = "batch") -> dict[str, Any]:
        return self._send(calls.upload_file(content, purpose)).json()

    def create_batch(self, input_file_id: str, **options: Any) -> dict[str, Any]:
        return self._send(calls.create_batch(input_file_id, **options)).json()

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        return self._send(calls.get_batch(batch_id)).json()

    def wait_batch(self, batch_id: str, poll_seconds: float = 2.0,
                   timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            batch = self.get_batch(batch_id)
            if batch["status"] in _BATCH_FINAL or (
                    deadline is not None and time.monotonic() >= deadline):
                return batch
            time.sleep(poll_seconds)

    def file_content(self, file_id: str) -> bytes:
        return self._send(calls.file_content(file_id)).content


class AsyncClient:
    """The same calls for asyncio code."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, *,
                 timeout: float = 60.0, max_retries: int = 8, backoff_seconds: float = 0.5,
                 backoff_max_seconds: float = 30.0) -> None:
        self._s = _Settings(base_url, api_key, timeout, max_retries, backoff_seconds,
                            backoff_max_seconds)
        self._http = httpx.AsyncClient(base_url=self._s.base_url, headers=self._s.headers)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: calls.Call) -> httpx.Response:
        s = self._s
        attempt = 0
        while True:
            try:
                response = await self._http.request(call.method, call.path,
                                                    **calls.request_kwargs(call, s.timeout))
            except httpx.TransportError:
                if attempt >= s.max_retries:
                    raise
                await asyncio.sleep(calls.retry_delay(attempt, None, s.backoff, s.backoff_max))
            else:
                if not calls.should_retry(response) or attempt >= s.max_retries:
                    return calls.checked(response)
                await asyncio.sleep(calls.retry_delay(attempt, response, s.backoff,
                                                      s.backoff_max))
            attempt += 1

    async def submit(self, prompt: str, image: bytes | str | Path | None = None,
                     **fields: Any) -> Job:
        return Job.from_response(await self._send(calls.submit(prompt, image, **fields)))

    async def get(self, job_id: str) -> Job:
        return Job.from_json((await self._send(calls.get(job_id))).json())

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _LONG_POLL_SECONDS if deadline is None else deadline - time.monotonic()
            response = await self._send(calls.get(job_id, max(0.0, min(left, 60))))
            job = Job.from_json(response.json())
            if job.done or (deadline is not None and time.monotonic() >= deadline):
                return job

    async def cancel(self, job_id: str) -> Job:
        try:
            return Job.from_json((await self._send(calls.cancel(job_id))).json())
        except ApiError as exc:
            if exc.code != "job_finished":
                raise
            return await self.get(job_id)

    async def iter_jobs(self, *, status: str | None = None, model: str | None = None,
                        batch_id: str | None = None, page_size: int = 100) -> AsyncIterator[Job]:
        cursor = None
        while True:
            page = (await self._send(calls.list_jobs(cursor, page_size, status=status,
                                                     model=model, batch_id=batch_id))).json()
            for item in page["data"]:
                yield Job.from_json(item)
            cursor = page.get("next_cursor")
            if not cursor:
                return


_BATCH_FINAL = frozenset({"completed", "failed", "expired", "cancelled"})


def verify_webhook(body: bytes | str, headers: Mapping[str, str],
                   secrets: list[str]) -> dict[str, Any]:
    """The event of a webhook request signed with any of `secrets` (rotation), or
    WebhookVerificationError for a forged, altered or stale one."""
    last: WebhookVerificationError | None = None
    for secret in secrets:
        try:
            return Webhook(secret).verify(body, dict(headers))
        except WebhookVerificationError as exc:
            last = exc
    raise last or WebhookVerificationError("no webhook secret to verify with")
