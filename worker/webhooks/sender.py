"""One webhook delivery attempt: a POST to an address the URL guard already checked.

The connection goes to `ResolvedUrl.address`, never to a fresh DNS answer for the host,
so a host that passed the guard cannot be rebound to an internal address in between.
"""

from __future__ import annotations

import email.utils
import functools
import math
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from shared.webhooks.urls import DEFAULT_PORTS, ResolvedUrl

USER_AGENT = "vlmq-webhooks/1"
EXCERPT_CHARS = 512
_MAX_ERROR_CHARS = 300
_DELTA_SECONDS = re.compile(r"^\d+(\.\d+)?$")

# Errors a remote endpoint or the network can cause; anything else is a bug and propagates.
_NETWORK_ERRORS = (httpx.HTTPError, httpx.InvalidURL, OSError)


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
    deadline = _Deadline(timeout_seconds)
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
        if not (expired or isinstance(exc, _NETWORK_ERRORS)):
            raise
        error = _timed_out(timeout_seconds) if expired else _describe(exc, timeout_seconds)
        return AttemptResult(None, _elapsed_ms(started), error, None, "")
    if expired:
        # The response may look complete after we cut the connection (a body delimited by
        # the connection closing), so a cut-off attempt never counts as answered.
        return AttemptResult(None, _elapsed_ms(started), _timed_out(timeout_seconds), None, "")
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
    deadline: _Deadline,
) -> tuple[int, float | None, str]:
    extensions: dict[str, Any] = {"trace": deadline.trace}
    if target.scheme == "https":
        # The URL names the IP, so httpcore would otherwise send the IP as SNI and check
        # the certificate against it; this makes both use the host name instead.
        extensions["sni_hostname"] = target.host
    with _client(timeout_seconds, ssl_context) as client:
        with client.stream(
            "POST",
            _pinned_url(target),
            content=body,
            headers=_request_headers(target, headers),
            extensions=extensions,
        ) as response:
            raw = _read_limited(response.iter_raw(), max_response_bytes)
            return (
                response.status_code,
                parse_retry_after(response.headers.get("retry-after")),
                _decode(raw, response.charset_encoding)[:EXCERPT_CHARS],
            )


def _client(timeout_seconds: float, ssl_context: ssl.SSLContext | None) -> httpx.Client:
    return httpx.Client(
        timeout=httpx.Timeout(timeout_seconds),
        follow_redirects=False,
        trust_env=False,  # no proxy or CA settings picked up from the environment
        verify=ssl_context if ssl_context is not None else _default_ssl_context(),
    )


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle takes ~30 ms; sharing one context is safe because httpcore only
    # ever sets the same ALPN protocols on it.
    return httpx.create_ssl_context(trust_env=False)


def _pinned_url(target: ResolvedUrl) -> str:
    address = f"[{target.address}]" if ":" in target.address else target.address
    return f"{target.scheme}://{address}:{target.port}{target.target}"


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
    host = f"[{target.host}]" if ":" in target.host else target.host
    if target.port != DEFAULT_PORTS[target.scheme]:
        host = f"{host}:{target.port}"
    result["Host"] = host
    return result


def _read_limited(chunks: Iterator[bytes], limit: int) -> bytes:
    """At most `limit` bytes; the rest is left unread and dropped with the connection."""
    buffer = bytearray()
    if limit <= 0:
        return b""
    for chunk in chunks:
        buffer += chunk
        if len(buffer) >= limit:
            break
    return bytes(buffer[:limit])


def _decode(raw: bytes, charset: str | None) -> str:
    try:
        return raw.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return raw.decode("utf-8", errors="replace")


class _Deadline:
    """Cuts the connection when the whole attempt outlives its timeout.

    httpx timeouts apply to each network operation, so a server sending one byte just
    before each read timeout could hold an attempt for ever; shutting the socket down from
    a timer bounds the total.
    """

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._expired = False
        self._finished = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore trace hook: keeps a handle on the TCP socket once it is connected."""
        if event != "connection.connect_tcp.complete":
            return
        sock = info["return_value"].get_extra_info("socket")
        if sock is None:
            return
        with self._lock:
            if self._finished:
                return
            # Our own descriptor for the same socket: TLS wrapping detaches the original
            # object, and closing ours at the end cannot close a reused descriptor number.
            self._sock = sock.dup()
            if self._expired:
                self._shutdown()

    def finish(self) -> bool:
        """Stop the timer; True when it had already cut the connection."""
        self._timer.cancel()
        with self._lock:
            self._finished = True
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            return self._expired

    def _expire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._expired = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is None:
            return
        try:
            # shutdown, unlike close, wakes a thread blocked reading this socket.
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed by the peer


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _timed_out(timeout_seconds: float) -> str:
    return f"timed out after {_format_seconds(timeout_seconds)} s"


def _format_seconds(seconds: float) -> str:
    text = f"{seconds:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _describe(exc: BaseException, timeout_seconds: float) -> str:
    """Short text for an attempt that got no response."""
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return _timed_out(timeout_seconds)
    for cause in _chain(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            detail = cause.verify_message or str(cause)
            return _clip(f"TLS error: certificate verify failed: {detail}")
        if isinstance(cause, ssl.SSLError):
            return _clip(f"TLS error: {cause.reason or cause}")
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ConnectionResetError):
            return "connection reset by peer"
        if isinstance(cause, TimeoutError):
            return _timed_out(timeout_seconds)
    if isinstance(exc, httpx.RemoteProtocolError):
        return _clip(f"protocol error: {exc}")
    if isinstance(exc, httpx.ConnectError):
        return _clip(f"connection failed: {exc}")
    return _clip(f"{type(exc).__name__}: {exc}")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"
