"""Webhook URL guard and delivery attempts, against real HTTP servers on loopback."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from email.utils import format_datetime
from pathlib import Path

import pytest

from shared.net.urls import (
    ResolvedUrl,
    WebhookUrlRefused,
    forbidden_reason,
    resolve_webhook_url,
)
from tests.helpers.loopback_http import LoopbackServer, ScriptedHandler, closed_port, drip, running
from worker.webhooks.sender import AttemptResult, parse_retry_after, post_webhook

LOOPBACK = ["127.0.0.1/32"]
PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


# --- servers -------------------------------------------------------------------------------

Respond = Callable[["_Handler"], None]


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes


class _Server(LoopbackServer):
    def __init__(self, respond: Respond, host: str = "127.0.0.1") -> None:
        super().__init__(host, _Handler)
        self.respond = respond
        self.requests: list[Recorded] = []
        self.sni_names: list[str | None] = []


class _Handler(ScriptedHandler):
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests.append(Recorded(self.path, dict(self.headers.items()), body))
        self.answer(self.server.respond)


def serve(
    respond: Respond, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> AbstractContextManager[_Server]:
    server = _Server(respond, host)
    if tls is not None:
        tls.sni_callback = lambda _sock, name, _ctx: server.sni_names.append(name)
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    return running(server)


def ok(handler: _Handler) -> None:
    handler.reply(200, b'{"received": true}', Content_Type="application/json")


def pinned(host: str, port: int, *, scheme: str = "http", path: str = "/hook") -> ResolvedUrl:
    """A URL naming `host` whose only address is 127.0.0.1, as if DNS said so."""
    return resolve_webhook_url(
        f"{scheme}://{host}:{port}{path}",
        allow_http=True,
        allowed_networks=LOOPBACK,
        resolver=lambda _host, _port: ["127.0.0.1"],
    )


def post(target: ResolvedUrl, **kwargs: object) -> AttemptResult:
    options: dict[str, object] = {"timeout_seconds": 2.0, "max_response_bytes": 64 * 1024}
    options.update(kwargs)
    return post_webhook(target, b'{"event": "job.succeeded"}', {}, **options)  # type: ignore[arg-type]


# --- guard: refusals -----------------------------------------------------------------------


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"IP literals must not be resolved, got {host}:{port}")


@pytest.mark.parametrize(
    ("url", "word"),
    [
        ("http://127.0.0.1/x", "loopback"),
        ("http://127.9.9.9:8080/x", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "cloud metadata"),
        ("http://169.254.1.1/", "link-local"),
        ("http://[::1]/", "loopback"),
        ("http://[::1]:8080/x", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "IPv4-mapped"),
        ("http://[::ffff:10.0.0.1]/", "IPv4-mapped"),
        ("http://10.1.2.3/", "private"),
        ("http://172.16.0.1/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://100.100.100.200/", "cloud metadata"),
        ("http://100.64.1.1/", "shared address space"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://192.0.2.10/", "non-public"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fd12:3456::1]/", "unique local"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://[64:ff9b::a00:1]/", "NAT64"),
        ("http://[2002:7f00:1::1]/", "6to4"),
        ("http://[::7f00:1]/", "IPv4-compatible"),
        ("http://[ff02::1]/", "multicast"),
    ],
)
def test_refuses_internal_addresses(url: str, word: str) -> None:
    with pytest.raises(WebhookUrlRefused) as refused:
        resolve_webhook_url(url, allow_http=True, allowed_networks=[], resolver=no_dns)
    assert word in refused.value.message
    assert "public https URL" in refused.value.message
    assert refused.value.code == "webhook_url_refused"
    assert refused.value.http_status == 400


@pytest.mark.parametrize(
    ("url", "allow_http", "word"),
    [
        ("https://user:pw@example.com/", True, "credentials"),
        ("https://user@example.com/", True, "credentials"),
        ("ftp://example.com/", True, "scheme"),
        ("file:///etc/passwd", True, "scheme"),
        ("example.com/hook", True, "scheme"),
        ("http://example.com/", False, "VLMQ_WEBHOOK_ALLOW_HTTP"),
        ("https:///hook", True, "no host"),
        ("https://example.com:0/", True, "port"),
        ("https://example.com:70000/", True, "port"),
        ("https://example.com:https/", True, "port"),
        ("https://exa mple.com/", True, "whitespace"),
        ("https://example.com/\r\nX-Injected: 1", True, "control"),
        ("https://[::1/", True, "parsed"),
        ("https://exa%2fmple.com/", True, "domain name"),
        ("https://example.com/" + "a" * 2048, True, "longer than 2048"),
    ],
)
def test_refuses_malformed_urls(url: str, allow_http: bool, word: str) -> None:
    with pytest.raises(WebhookUrlRefused) as refused:
        resolve_webhook_url(
            url, allow_http=allow_http, allowed_networks=[], resolver=lambda h, p: [PUBLIC_V4]
        )
    assert word in refused.value.message


def test_localhost_is_refused_through_system_dns() -> None:
    with pytest.raises(WebhookUrlRefused) as refused:
        resolve_webhook_url("http://localhost:8080/hook", allow_http=True, allowed_networks=[])
    assert "loopback" in refused.value.message
    assert "localhost resolves to" in refused.value.message


def test_name_resolving_to_private_address_is_refused() -> None:
    with pytest.raises(WebhookUrlRefused) as refused:
        resolve_webhook_url(
            "https://hooks.example.test/x",
            allow_http=False,
            allowed_networks=[],
            resolver=lambda host, port: ["10.0.0.7"],
        )
    assert "private address 10.0.0.7" in refused.value.message


@pytest.mark.parametrize(
    "answer", [[PUBLIC_V4, "10.0.0.7"], ["10.0.0.7", PUBLIC_V4], [PUBLIC_V6, "fd00::7"]]
)
def test_any_internal_address_in_the_answer_refuses(answer: list[str]) -> None:
    with pytest.raises(WebhookUrlRefused) as refused:
        resolve_webhook_url(
            "https://mixed.example.test/",
            allow_http=False,
            allowed_networks=[],
            resolver=lambda host, port: answer,
        )
    assert "private" in refused.value.message


@pytest.mark.parametrize("failure", [socket.gaierror(-2, "Name or service not known"), None])
def test_unresolvable_names_are_refused(failure: OSError | None) -> None:
    def resolver(host: str, port: int) -> list[str]:
        if failure is not None:
            raise failure
        return []

    with pytest.raises(WebhookUrlRefused) as refused:
        resolve_webhook_url(
            "https://nowhere.example.test/",
            allow_http=False,
            allowed_networks=[],
            resolver=resolver,
        )
    assert "could not resolve" in refused.value.message


def test_guard_refuses_before_connecting() -> None:
    with serve(ok) as server:
        port = server.port
        urls = [
            f"http://127.0.0.1:{port}/",
            f"http://localhost:{port}/",
            f"http://[::ffff:127.0.0.1]:{port}/",
            f"http://internal.example.test:{port}/",
        ]
        for url in urls:
            with pytest.raises(WebhookUrlRefused):
                resolve_webhook_url(
                    url,
                    allow_http=True,
                    allowed_networks=[],
                    resolver=lambda host, p: ["127.0.0.1"],
                )
        # A connection would be counted even if it never sent a request.
        time.sleep(0.1)
        assert server.connections == 0


# --- guard: accepted -----------------------------------------------------------------------


def test_accepts_public_ip_literal() -> None:
    resolved = resolve_webhook_url(
        f"https://{PUBLIC_V4}/hook?a=1#fragment",
        allow_http=False,
        allowed_networks=[],
        resolver=no_dns,
    )
    assert resolved == ResolvedUrl(
        url=f"https://{PUBLIC_V4}/hook?a=1",
        scheme="https",
        host=PUBLIC_V4,
        port=443,
        target="/hook?a=1",
        address=PUBLIC_V4,
    )


def test_accepts_name_resolving_to_public_addresses() -> None:
    asked: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return [PUBLIC_V6, PUBLIC_V4]

    resolved = resolve_webhook_url(
        "HTTPS://Hooks.Example.COM:8443", allow_http=False, allowed_networks=[], resolver=resolver
    )
    assert asked == [("hooks.example.com", 8443)]
    assert (resolved.scheme, resolved.host, resolved.port) == ("https", "hooks.example.com", 8443)
    assert resolved.target == "/"
    assert resolved.address == PUBLIC_V6


def test_internationalised_names_are_resolved_in_ascii() -> None:
    resolved = resolve_webhook_url(
        "https://bücher.example/hook",
        allow_http=False,
        allowed_networks=[],
        resolver=lambda host, port: [PUBLIC_V4],
    )
    assert resolved.host == "xn--bcher-kva.example"


def test_allowed_networks_admit_loopback() -> None:
    resolved = resolve_webhook_url(
        "http://127.0.0.1:8080/", allow_http=True, allowed_networks=LOOPBACK, resolver=no_dns
    )
    assert (resolved.address, resolved.port, resolved.target) == ("127.0.0.1", 8080, "/")
    with pytest.raises(WebhookUrlRefused):
        resolve_webhook_url(
            "http://127.0.0.2:8080/", allow_http=True, allowed_networks=LOOPBACK, resolver=no_dns
        )


def test_forbidden_reason() -> None:
    assert forbidden_reason("8.8.8.8", []) is None
    assert forbidden_reason("2606:4700:4700::1111", []) is None
    assert forbidden_reason("64:ff9b::808:808", []) is None  # NAT64 of a public address
    assert forbidden_reason("127.0.0.1", []) == "loopback address 127.0.0.1"
    assert "cloud metadata" in str(forbidden_reason("169.254.169.254", []))
    assert "IPv4-mapped" in str(forbidden_reason("::ffff:10.0.0.1", []))
    assert forbidden_reason("10.0.0.1", ["10.0.0.0/8"]) is None
    assert forbidden_reason("::ffff:127.0.0.1", LOOPBACK) is None
    assert forbidden_reason("::1", LOOPBACK) is not None
    with pytest.raises(ValueError):
        forbidden_reason("8.8.8.8", ["not-a-network"])


# --- delivery attempts ---------------------------------------------------------------------


def test_post_delivers_body_and_headers_to_the_pinned_address() -> None:
    with serve(ok) as server:
        # The name does not exist anywhere; only the pinned address makes this work.
        target = pinned("hooks.example.test", server.port, path="/hook?id=42")
        result = post_webhook(
            target,
            b'{"event": "job.succeeded"}',
            {"X-Vlmq-Signature": "v1=abc", "X-Vlmq-Event": "job.succeeded"},
            timeout_seconds=2.0,
            max_response_bytes=1024,
        )
    assert result.status_code == 200
    assert result.error is None
    assert result.response_excerpt == '{"received": true}'
    assert result.retry_after_seconds is None
    assert 0 <= result.latency_ms < 2000
    [request] = server.requests
    assert request.path == "/hook?id=42"
    assert request.body == b'{"event": "job.succeeded"}'
    assert request.headers["Host"] == f"hooks.example.test:{server.port}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == "vlmq-webhooks/1"
    assert request.headers["X-Vlmq-Signature"] == "v1=abc"
    assert request.headers["X-Vlmq-Event"] == "job.succeeded"


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_post_to_an_ipv6_address() -> None:
    with serve(ok, host="::1") as server:
        target = resolve_webhook_url(
            f"http://hooks.example.test:{server.port}/v6",
            allow_http=True,
            allowed_networks=["::1/128"],
            resolver=lambda host, port: ["::1"],
        )
        result = post(target)
    assert (result.status_code, result.error) == (200, None)
    assert server.requests[0].headers["Host"] == f"hooks.example.test:{server.port}"


def test_non_2xx_status_and_body_are_returned_as_is() -> None:
    def gone(handler: _Handler) -> None:
        handler.reply(410, b"\xffgone" + b"x" * 1000)

    with serve(gone) as server:
        result = post(pinned("hooks.example.test", server.port))
    assert result.status_code == 410
    assert result.error is None
    assert result.response_excerpt.startswith("\ufffdgone")
    assert len(result.response_excerpt) == 512


def test_redirects_are_not_followed() -> None:
    with serve(ok) as elsewhere:

        def redirect(handler: _Handler) -> None:
            handler.reply(302, Location=f"http://127.0.0.1:{elsewhere.port}/stolen")

        with serve(redirect) as server:
            result = post(pinned("hooks.example.test", server.port))
    assert result.status_code == 302
    assert result.error is None
    assert len(server.requests) == 1
    assert elsewhere.connections == 0


def test_slow_server_times_out() -> None:
    def slow(handler: _Handler) -> None:
        handler.server.release.wait(10)

    with serve(slow) as server:
        started = time.monotonic()
        result = post(pinned("hooks.example.test", server.port), timeout_seconds=0.5)
        elapsed = time.monotonic() - started
    assert result.status_code is None
    assert result.error == "timed out after 0.5 s"
    assert elapsed < 1.5
    assert 400 <= result.latency_ms < 1500


def test_dripping_server_is_cut_off_at_the_deadline() -> None:
    # Each byte arrives well within the per-read timeout; only the overall deadline stops it.
    with serve(drip(1000)) as server:
        started = time.monotonic()
        result = post(pinned("hooks.example.test", server.port), timeout_seconds=0.6)
        elapsed = time.monotonic() - started
    assert result.status_code is None
    assert result.error == "timed out after 0.6 s"
    assert elapsed < 1.2


def test_large_body_is_read_only_up_to_the_limit() -> None:
    size = 5 * 1024 * 1024
    chunk = b"a" * 65536

    def big(handler: _Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(size))
        handler.end_headers()
        for _ in range(size // len(chunk)):
            if handler.server.release.is_set():
                return
            handler.wfile.write(chunk)

    with serve(big) as server:
        started = time.monotonic()
        result = post(pinned("hooks.example.test", server.port), max_response_bytes=1000)
        elapsed = time.monotonic() - started
    assert result.status_code == 200
    assert result.error is None
    assert result.response_excerpt == "a" * 512
    assert elapsed < 1.0


def test_retry_after_header_is_parsed() -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)

    def busy(handler: _Handler) -> None:
        value = "7" if handler.path == "/seconds" else format_datetime(later, usegmt=True)
        handler.reply(503, b"busy", Retry_After=value)

    with serve(busy) as server:
        seconds = post(pinned("hooks.example.test", server.port, path="/seconds"))
        date = post(pinned("hooks.example.test", server.port, path="/date"))
    assert (seconds.status_code, seconds.retry_after_seconds) == (503, 7.0)
    assert date.status_code == 503
    assert date.retry_after_seconds is not None and 100 < date.retry_after_seconds <= 120


def test_parse_retry_after() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 120 ", now) == 120.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now) == 30.0
    assert parse_retry_after("Wed, 31 Dec 2025 23:00:00 GMT", now) == 0.0
    for garbage in [None, "", "-5", "soon", "inf", "nan", "1e3", "Thu, 99 Foo 2026"]:
        assert parse_retry_after(garbage, now) is None


def test_connection_refused() -> None:
    result = post(pinned("hooks.example.test", closed_port()))
    assert result.status_code is None
    assert result.error == "connection refused"
    assert result.response_excerpt == ""


# --- TLS -----------------------------------------------------------------------------------


@dataclass
class Pki:
    ca_file: Path
    server_contexts: dict[str, ssl.SSLContext] = field(default_factory=dict)

    def client(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("test ca"))
        .issuer_name(name("test ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    result = Pki(ca_file=directory / "ca.pem")
    result.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    for host in ("hooks.example.test", "other.example.test"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(host))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        cert_file, key_file = directory / f"{host}.pem", directory / f"{host}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(pem(key))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        result.server_contexts[host] = context
    return result


def test_https_uses_host_name_for_sni_and_certificate(pki: Pki) -> None:
    with serve(ok, tls=pki.server_contexts["hooks.example.test"]) as server:
        target = pinned("hooks.example.test", server.port, scheme="https")
        result = post(target, ssl_context=pki.client())
    assert result.error is None
    assert result.status_code == 200
    assert server.sni_names == ["hooks.example.test"]
    assert server.requests[0].headers["Host"] == f"hooks.example.test:{server.port}"


def test_https_refuses_a_certificate_for_another_name(pki: Pki) -> None:
    with serve(ok, tls=pki.server_contexts["other.example.test"]) as server:
        target = pinned("hooks.example.test", server.port, scheme="https")
        result = post(target, ssl_context=pki.client())
    assert result.status_code is None
    assert result.error is not None
    assert result.error.startswith("TLS error: certificate verify failed")
    assert server.requests == []


def test_https_with_default_trust_store_refuses_unknown_ca(pki: Pki) -> None:
    with serve(ok, tls=pki.server_contexts["hooks.example.test"]) as server:
        result = post(pinned("hooks.example.test", server.port, scheme="https"))
    assert result.status_code is None
    assert result.error is not None and result.error.startswith("TLS error:")
