"""Limits on how slowly and how much a client may send before the app sees a request.

uvicorn bounds idle keep-alive connections but not a request in progress: a client that
sends its headers or body a byte at a time holds a connection (and its buffers) for as long
as it likes. `LimitedH11Protocol` is uvicorn's h11 protocol (`vlmq api` selects it with
`--http`) with two timers: the request's head must arrive whole within
VLMQ_API_HEADER_TIMEOUT_SECONDS of its first byte, and while the body is read no gap between
chunks may exceed VLMQ_API_BODY_TIMEOUT_SECONDS. h11 itself bounds the bytes it buffers for an
incomplete head (`--h11-max-incomplete-event-size`); `HeaderLimits` checks the count and the
total size of the headers of a complete head, which can arrive in one read.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys

import h11
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from shared.settings import ApiSettings

log = logging.getLogger(__name__)

_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 16\r\nconnection: close\r\n\r\nRequest Timeout\n"
)


@functools.cache
def _timeouts() -> tuple[float, float]:
    # Read once per process: uvicorn builds a protocol object per connection.
    api = ApiSettings()
    return api.api_header_timeout_seconds, api.api_body_timeout_seconds


class LimitedH11Protocol(H11Protocol):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.header_timeout, self.body_timeout = _timeouts()
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._last_body_at = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that never sends a byte is idle like a kept-alive one, and is closed
        # as one (uvicorn arms nothing until the first response otherwise).
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self.conn.their_state is h11.IDLE:
            # The first byte of a request (on a new or a kept-alive connection).
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)
        super().data_received(data)
        state = self.conn.their_state
        if state is not h11.IDLE:
            self._cancel_head_timer()
        if state is h11.SEND_BODY:
            self._last_body_at = self.loop.time()
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.body_timeout, self._body_check)
        else:
            self._cancel_body_timer()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers every h11.RemoteProtocolError with a 400; h11 knows better for
        # some (431 for a head over the size limit), and says so in the error it raised.
        status = getattr(sys.exception(), "error_status_hint", 400)
        if status == 400:
            super().send_400_response(msg)
            return
        log.warning("refused a request: %s (%d)", sys.exception(), status)
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
        body = STATUS_PHRASES[status] + b"\n"
        for event in (h11.Response(status_code=status, headers=headers,
                                   reason=STATUS_PHRASES[status]),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        log.info("closed a connection whose request head took over %.0f s", self.header_timeout)
        # No request is in progress (their state is IDLE), so a response may still be sent.
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()

    def _body_check(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        now = self.loop.time()
        if self.flow.read_paused or (self.cycle is not None and self.cycle.waiting_for_100_continue):
            # The app has not taken what was read, or not yet asked for the body the client
            # holds back until a 100 Continue: the wait is the app's, not the client's.
            self._last_body_at = now
        idle = now - self._last_body_at
        if idle < self.body_timeout:
            self._body_timer = self.loop.call_later(self.body_timeout - idle, self._body_check)
            return
        log.info("closed a connection whose request body stalled for over %.0f s",
                 self.body_timeout)
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            cycle.response_started = True
            self.transport.write(_REQUEST_TIMEOUT)
        if cycle is not None:
            # The app's receive() answers http.disconnect; what it sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None


class HeaderLimits:
    """ASGI middleware: 431 for a request with more than `max_headers` headers or more than
    `max_bytes` of request line and headers."""

    def __init__(self, app: ASGIApp, max_headers: int, max_bytes: int) -> None:
        self.app = app
        self.max_headers = max_headers
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            size += sum(len(name) + len(value) + 4 for name, value in headers)
            if len(headers) > self.max_headers or size > self.max_bytes:
                await self._refuse(send, len(headers), size)
                return
        await self.app(scope, receive, send)

    async def _refuse(self, send: Send, count: int, size: int) -> None:
        body = json.dumps({"error": {
            "code": "headers_too_large",
            "message": f"{count} headers of {size} bytes; the limits are {self.max_headers} "
                       f"headers and {self.max_bytes} bytes",
        }}).encode()
        await send({
            "type": "http.response.start",
            "status": 431,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        })
        await send({"type": "http.response.body", "body": body})
