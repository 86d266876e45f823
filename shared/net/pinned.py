"""HTTP exchanges with an address the URL guard already checked, bounded in total time.

Webhook deliveries and image fetches both connect to `ResolvedUrl.address`, never to a
fresh DNS answer for the host, so a host that passed the guard cannot be rebound to an
internal address in between. Redirects are never followed here: a caller that follows
them must put each Location through the guard again.
"""

from __future__ import annotations

import functools
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import httpx

from shared.net.urls import DEFAULT_PORTS, ResolvedUrl

_MAX_ERROR_CHARS = 300

# Errors a remote endpoint or the network can cause; anything else is a bug and propagates.
NETWORK_ERRORS = (httpx.HTTPError, httpx.InvalidURL, OSError)


def pinned_client(timeout_seconds: float, ssl_context: ssl.SSLContext | None) -> httpx.Client:
    return httpx.Client(
        timeout=httpx.Timeout(timeout_seconds),
        follow_redirects=False,
        trust_env=False,  # no proxy or CA settings picked up from the environment
        verify=ssl_context if ssl_context is not None else default_ssl_context(),
    )


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle takes ~30 ms; sharing one context is safe because httpcore only
    # ever sets the same ALPN protocols on it.
    return httpx.create_ssl_context(trust_env=False)


def pinned_url(target: ResolvedUrl) -> str:
    address = f"[{target.address}]" if ":" in target.address else target.address
    return f"{target.scheme}://{address}:{target.port}{target.target}"


def host_header(target: ResolvedUrl) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    if target.port != DEFAULT_PORTS[target.scheme]:
        host = f"{host}:{target.port}"
    return host


def request_extensions(target: ResolvedUrl, deadline: Deadline) -> dict[str, Any]:
    extensions: dict[str, Any] = {"trace": deadline.trace}
    if target.scheme == "https":
        # The URL names the IP, so httpcore would otherwise send the IP as SNI and check
        # the certificate against it; this makes both use the host name instead.
        extensions["sni_hostname"] = target.host
    return extensions


def read_limited(chunks: Iterator[bytes], limit: int) -> bytes:
    """At most `limit` bytes; the rest is left unread and dropped with the connection."""
    buffer = bytearray()
    if limit <= 0:
        return b""
    for chunk in chunks:
        buffer += chunk
        if len(buffer) >= limit:
            break
    return bytes(buffer[:limit])


class Deadline:
    """Cuts the connection when the whole exchange outlives its timeout.

    httpx timeouts apply to each network operation, so a server sending one byte just
    before each read timeout could hold an exchange for ever; shutting the socket down from
    a timer bounds the total.
    """

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._expired = False
        self._finished = False
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
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


def timed_out(timeout_seconds: float) -> str:
    return f"timed out after {_format_seconds(timeout_seconds)} s"


def _format_seconds(seconds: float) -> str:
    text = f"{seconds:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def describe_failure(exc: BaseException, timeout_seconds: float) -> str:
    """Short text for an exchange that got no response."""
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return timed_out(timeout_seconds)
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
            return timed_out(timeout_seconds)
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
