"""Real HTTP servers on loopback whose answers a test scripts per request, for the code
that fetches images and posts webhooks: what it does with each status, header, redirect,
slow or endless body, and how many connections it opens."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar


class LoopbackServer(ThreadingHTTPServer):
    """Listens on a free port of `host` (IPv4 or IPv6) and counts the connections made."""

    def __init__(self, host: str, handler: type[BaseHTTPRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, 0), handler)
        self.connections = 0
        # Set at shutdown so handlers that wait or drip end and their threads can be joined.
        self.release = threading.Event()
        self._count_lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str) -> str:
        return f"http://{self.server_address[0]}:{self.port}{path}"

    def verify_request(self, request: object, client_address: object) -> bool:
        with self._count_lock:
            self.connections += 1
        return True


class ScriptedHandler(BaseHTTPRequestHandler):
    """One request a connection: every answer closes it, so each retry or redirect hop
    shows as a connection of its own."""

    protocol_version = "HTTP/1.1"
    server: LoopbackServer

    def answer(self, respond: Callable[[ScriptedHandler], None]) -> None:
        try:
            respond(self)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading, as it is meant to
        self.close_connection = True

    def reply(self, status: int, body: bytes = b"", **headers: str) -> None:
        """Headers as keyword arguments: `Content_Type=...` is sent as `Content-Type`."""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def drip(length: int) -> Callable[[ScriptedHandler], None]:
    """Promises `length` bytes, then sends one every 50 ms until the server stops: each
    read is quick, so only an overall deadline ends it."""

    def respond(h: ScriptedHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(length))
        h.end_headers()
        h.wfile.flush()
        while not h.server.release.wait(0.05):
            h.wfile.write(b".")
            h.wfile.flush()

    return respond


S = TypeVar("S", bound=LoopbackServer)


@contextmanager
def running(server: S) -> Iterator[S]:
    """Serves until the block ends, then releases waiting handlers and stops."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()  # joins the handler threads, unless they are daemons
        thread.join()


def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
