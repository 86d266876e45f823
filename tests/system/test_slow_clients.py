"""Slow and oversized requests, over raw sockets against a real API process with short
timeouts: they must not hold a connection open, and no answer may be built from Host."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator

import pytest

from tests.helpers.images import png_bytes
from tests.helpers.services import start_api
from tests.helpers.stack import Stack

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
# Server-side timers fire on time; the rest is this machine being busy.
SLACK = 4.0


@pytest.fixture(scope="module")
def guarded(stack: Stack) -> Iterator[tuple[str, int]]:
    st = stack.with_env(api_header_timeout_seconds=str(HEADER_TIMEOUT),
                        api_body_timeout_seconds=str(BODY_TIMEOUT),
                        api_max_header_bytes=str(16 * 1024), api_max_headers="50")
    svc, base = start_api(st.env, st.log_dir, name="api-slow-clients")
    host, port = base.removeprefix("http://").split(":")
    yield host, int(port)
    svc.stop()


def _connect(addr: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(addr, timeout=HEADER_TIMEOUT + SLACK + 5)
    return sock


def _read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when it closed (monotonic)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return data, time.monotonic()
        data += chunk


def _response(sock: socket.socket) -> http.client.HTTPResponse:
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    return resp


def _send_all_or_refused(sock: socket.socket, data: bytes) -> None:
    # The server may answer and close before it has read all of an oversized request.
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def test_a_stalled_request_head_is_closed_within_the_timeout(guarded: tuple[str, int]) -> None:
    with _connect(guarded) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: loc")
        data, closed = _read_until_closed(sock)
    assert HEADER_TIMEOUT * 0.8 <= closed - started < HEADER_TIMEOUT + SLACK
    assert data == b"" or data.startswith(b"HTTP/1.1 408 "), data


def test_a_head_trickled_a_byte_at_a_time_is_closed_too(guarded: tuple[str, int]) -> None:
    # Each byte arrives well within the timeout; the head as a whole does not.
    with _connect(guarded) as sock:
        started = time.monotonic()
        closed = None
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 100:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = time.monotonic()
                break
            time.sleep(0.2)
            if time.monotonic() - started > HEADER_TIMEOUT + SLACK:
                break
        if closed is None:
            _, closed = _read_until_closed(sock)
    assert closed - started < HEADER_TIMEOUT + SLACK


def test_a_stalled_body_gets_408_or_a_close(guarded: tuple[str, int], stack: Stack) -> None:
    head = (f"POST /v1/files HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "
            f"{stack.api_key}\r\nContent-Type: multipart/form-data; boundary=xyz\r\n"
            f"Content-Length: 100000\r\n\r\n").encode()
    with _connect(guarded) as sock:
        sock.sendall(head + b"--xyz\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n")
        started = time.monotonic()
        data, closed = _read_until_closed(sock)
    assert closed - started < BODY_TIMEOUT + SLACK
    assert data == b"" or data.startswith(b"HTTP/1.1 408 "), data


def test_a_slow_but_steady_body_is_read_whole(guarded: tuple[str, int], stack: Stack) -> None:
    # Chunks keep arriving within the body timeout, so the upload is taken, though it
    # takes longer than the timeout in all.
    image = png_bytes(64, 48)
    boundary = "vlmqboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nslow\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nparked\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n").encode()
    body += image + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "
            f"{stack.api_key}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with _connect(guarded) as sock:
        sock.sendall(head)
        step = len(body) // 4 + 1
        for i in range(0, len(body), step):
            time.sleep(BODY_TIMEOUT * 0.5)
            sock.sendall(body[i:i + step])
        resp = _response(sock)
        assert resp.status == 202, resp.read()


def test_a_kept_alive_connection_may_idle_longer_than_the_head_timeout(
    guarded: tuple[str, int],
) -> None:
    # The head timer starts at a request's first byte, not when the last response ended.
    with _connect(guarded) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            resp = _response(sock)
            assert resp.status == 200
            resp.read()
            time.sleep(HEADER_TIMEOUT * 1.5)


def test_a_megabyte_of_headers_is_refused(guarded: tuple[str, int]) -> None:
    with _connect(guarded) as sock:
        _send_all_or_refused(sock, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: "
                             + b"a" * (1024 * 1024) + b"\r\n\r\n")
        data, _ = _read_until_closed(sock)
    assert data == b"" or data.startswith(b"HTTP/1.1 431 "), data[:200]


def test_ten_thousand_headers_are_refused(guarded: tuple[str, int]) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
    with _connect(guarded) as sock:
        _send_all_or_refused(sock, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n"
                             + headers + b"\r\n")
        data, _ = _read_until_closed(sock)
    assert data == b"" or data.startswith(b"HTTP/1.1 431 "), data[:200]


def test_more_headers_than_allowed_in_few_bytes_get_431(guarded: tuple[str, int]) -> None:
    # 60 tiny headers are under the byte limit; only their number is over.
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(60))
    with _connect(guarded) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + headers + b"\r\n")
        resp = _response(sock)
        assert resp.status == 431
        assert b"headers_too_large" in resp.read()


def test_no_redirect_is_built_from_the_host_header(guarded: tuple[str, int],
                                                   stack: Stack) -> None:
    for path in ("/v1/jobs/", "/v1/files/", "/healthz/"):
        with _connect(guarded) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer "
                         f"{stack.api_key}\r\nConnection: close\r\n\r\n".encode())
            resp = _response(sock)
            location = resp.getheader("location") or ""
            resp.read()
        assert "evil.example" not in location, (path, resp.status, location)
        assert resp.status == 404, (path, resp.status)
