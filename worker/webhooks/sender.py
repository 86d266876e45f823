"""One webhook delivery attempt: a POST to an address the URL guard already checked.

The connection goes to `ResolvedUrl.address`, never to a fresh DNS answer for the host,
so a host that passed the guard cannot be rebound to an internal address in between.
"""

from __future__ import annotations

import email.utils
import math
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from shared.net.pinned import (
    NETWORK_ERRORS,
    Deadline,
    describe_failure,
    host_header,
    pinned_client,
    pinned_url,
    read_limited,
    request_extensions,
    timed_out,
)
from shared.net.urls import ResolvedUrl

USER_AGENT = "vlmq-webhooks/1"
EXCERPT_CHARS = 512
_DELTA_SECONDS = re.compile(r"^\d+(\.\d+)?$")


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None  # None when no complete HTTP response came back
    latency_ms: int
    error: str | None  # None when a response came back, whatever its status
    retry_after_seconds: float | None
    response_excerpt: str  # at most EXCERPT_CHARS characters of the response body


def post_webhook(
    target: ResolvedUrl,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout_seconds: float,
    max_response_bytes: int,
    ssl_context: ssl.SSLContext | None = None,
) -> AttemptResult:
    """POST `body` to `target`; network failures come back as results, never as exceptions.

    `ssl_context` replaces the default trust store (certifi), e.g. for a private CA.
    """
    started = time.monotonic()
    deadline = Deadline(timeout_seconds)
    try:
        status, retry_after, excerpt = _exchange(
            target,
            body,
            headers,
            timeout_seconds=timeout_seconds,
            max_response_bytes=max_response_bytes,
            ssl_context=ssl_context,
            deadline=deadline,
        )
        expired = deadline.finish()
    except Exception as exc:
        expired = deadline.finish()
        if not (expired or isinstance(exc, NETWORK_ERRORS)):
            raise
        error = timed_out(timeout_seconds) if expired else describe_failure(exc, timeout_seconds)
        return AttemptResult(None, _elapsed_ms(started), error, None, "")
    if expired:
        # The response may look complete after we cut the connection (a body delimited by
        # the connection closing), so a cut-off attempt never counts as answered.
        return AttemptResult(None, _elapsed_ms(started), timed_out(timeout_seconds), None, "")
    return AttemptResult(status, _elapsed_ms(started), None, retry_after, excerpt)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.match(value):
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    # HTTP-dates are always GMT; "-0000" or a missing zone gives a naive datetime.
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _exchange(
    target: ResolvedUrl,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout_seconds: float,
    max_response_bytes: int,
    ssl_context: ssl.SSLContext | None,
    deadline: Deadline,
) -> tuple[int, float | None, str]:
    with pinned_client(timeout_seconds, ssl_context) as client:
        with client.stream(
            "POST",
            pinned_url(target),
            content=body,
            headers=_request_headers(target, headers),
            extensions=request_extensions(target, deadline),
        ) as response:
            raw = read_limited(response.iter_raw(), max_response_bytes)
            return (
                response.status_code,
                parse_retry_after(response.headers.get("retry-after")),
                _decode(raw, response.charset_encoding)[:EXCERPT_CHARS],
            )


def _request_headers(target: ResolvedUrl, headers: Mapping[str, str]) -> httpx.Headers:
    result = httpx.Headers(
        {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            # Only the raw bytes are read, and a compressed body could expand far beyond
            # max_response_bytes when decoded.
            "Accept-Encoding": "identity",
        }
    )
    result.update(headers)
    result["Host"] = host_header(target)
    return result


def _decode(raw: bytes, charset: str | None) -> str:
    try:
        return raw.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return raw.decode("utf-8", errors="replace")


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
