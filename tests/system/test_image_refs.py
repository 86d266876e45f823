"""Images given by reference (jobs.image_url): which URLs are accepted without fetching, how
the worker fetches them (SSRF guard on every redirect hop, size and time limits, S3 with the
store's settings), and which failures are final. Servers are real: http on loopback, moto S3.

Jobs are inserted straight into the database for a model of this module's own, so no other
test's worker claims them, and run by an echo worker.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from shared.jobs import repo as jobs_repo
from shared.jobs.status import JobStatus
from shared.jobs.view import JobOut
from shared.models import Job
from shared.net.image_refs import (
    HttpImageRef,
    ImageUrlRefused,
    S3ImageRef,
    check_image_url,
)
from shared.settings import Settings
from shared.timeutil import utcnow
from tests.helpers.images import png_bytes
from tests.helpers.loopback_http import LoopbackServer, ScriptedHandler, closed_port, drip, running
from tests.helpers.services import start_worker
from tests.helpers.stack import Stack, db_sessions
from tests.helpers.store import store_location
from worker.image_fetch import MAX_REDIRECTS, ImageFetcher, ImageFetchError

LOOPBACK = ["127.0.0.1/32"]
PARAMS = {"max_tokens": 4, "temperature": 0.0, "top_p": 1.0, "top_k": -1, "seed": None,
          "stop": []}


# -- the check at submit: no network ----------------------------------------------------------


def ref_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        store_url="s3://store-bucket/uploads", image_fetch_allowed_buckets=["shared-images"],
    )
    return Settings(**{**values, **overrides})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://images.example.com/a.png", HttpImageRef("https://images.example.com/a.png")),
        ("HTTPS://images.example.com:8443/a.png?sig=1",
         HttpImageRef("HTTPS://images.example.com:8443/a.png?sig=1")),
        # .invalid never resolves: names are left for the fetch to resolve and check.
        ("https://images.invalid/a.png", HttpImageRef("https://images.invalid/a.png")),
        ("s3://store-bucket/refs/a.png", S3ImageRef("store-bucket", "refs/a.png")),
        ("s3://shared-images/x/y z.png", S3ImageRef("shared-images", "x/y z.png")),
        ("s3://shared-images/uploads/a.png", S3ImageRef("shared-images", "uploads/a.png")),
        ("s3://shared-images/q?a=1#f", S3ImageRef("shared-images", "q?a=1#f")),
    ],
)
def test_accepted_references(url: str, expected: object) -> None:
    assert check_image_url(url, ref_settings()) == expected


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://images.example.com/a.png", ["scheme 'ftp'", "https://"]),
        ("file:///etc/passwd", ["scheme 'file'"]),
        ("data:image/png;base64,AAAA", ["scheme 'data'"]),
        ("images.example.com/a.png", ["scheme"]),
        ("http://images.example.com/a.png", ["must use https", "VLMQ_IMAGE_FETCH_ALLOW_HTTP"]),
        ("https://127.0.0.1/a.png", ["loopback address 127.0.0.1", "image URL is refused"]),
        ("https://10.1.2.3/a.png", ["private address 10.1.2.3"]),
        ("https://169.254.169.254/latest/meta-data", ["cloud metadata"]),
        ("https://[::ffff:192.168.0.1]/a.png", ["IPv4-mapped"]),
        ("https://[::1]:8443/a.png", ["loopback"]),
        ("https://user:pw@images.example.com/a.png", ["user name or password"]),
        ("https://images.example.com/" + "a" * 2048, ["longer than 2048"]),
        ("s3://other-bucket/a.png", ["bucket 'other-bucket' is not one",
                                     "VLMQ_IMAGE_FETCH_ALLOWED_BUCKETS"]),
        ("s3://store-bucket/uploads/images/0b6f.png", ["this server's own", "'uploads/'"]),
        ("s3://store-bucket/refs/../uploads/images/0b6f.png", ["'..'"]),
        ("s3://store-bucket/", ["names no object"]),
        ("s3://Bad_Bucket/a.png", ["not a valid S3 bucket name"]),
        ("s3://store-bucket/a\nb.png", ["control characters"]),
    ],
)
def test_refused_references(url: str, words: list[str]) -> None:
    with pytest.raises(ImageUrlRefused) as refused:
        check_image_url(url, ref_settings())
    assert refused.value.code == "image_url_refused"
    assert refused.value.http_status == 400
    for word in words:
        assert word in refused.value.message


def test_an_empty_store_prefix_leaves_no_key_of_the_store_bucket_to_name() -> None:
    settings = ref_settings(store_url="s3://store-bucket")
    with pytest.raises(ImageUrlRefused, match="this server's own"):
        check_image_url("s3://store-bucket/refs/a.png", settings)
    # Listing the store's bucket does not open its objects either.
    listed = ref_settings(store_url="s3://store-bucket/uploads",
                          image_fetch_allowed_buckets=["store-bucket"])
    with pytest.raises(ImageUrlRefused, match="this server's own"):
        check_image_url("s3://store-bucket/uploads/x.png", listed)


def test_a_folder_store_reads_no_s3_references() -> None:
    settings = ref_settings(store_url="file://./objects")
    with pytest.raises(ImageUrlRefused) as refused:
        check_image_url("s3://shared-images/a.png", settings)
    assert "local folder" in refused.value.message
    assert "https://" in refused.value.message


def test_development_settings_admit_http_and_listed_networks_only() -> None:
    settings = ref_settings(image_fetch_allow_http=True, image_fetch_allowed_networks=LOOPBACK)
    url = "http://127.0.0.1:8080/a.png"
    assert check_image_url(url, settings) == HttpImageRef(url)
    with pytest.raises(ImageUrlRefused, match="loopback address 127.0.0.2"):
        check_image_url("http://127.0.0.2:8080/a.png", settings)
    with pytest.raises(ImageUrlRefused, match="private address 10.0.0.1"):
        check_image_url("https://10.0.0.1/a.png", settings)


def test_allowed_networks_must_be_networks() -> None:
    with pytest.raises(ValidationError, match="not a network"):
        Settings(image_fetch_allowed_networks=["localhost"])


# -- servers ---------------------------------------------------------------------------------

Route = Callable[["_Handler"], None]


class _Server(LoopbackServer):
    daemon_threads = True

    def __init__(self, host: str, routes: dict[str, Route]) -> None:
        super().__init__(host, _Handler)
        self.routes = routes


class _Handler(ScriptedHandler):
    server: _Server

    def do_GET(self) -> None:
        route = self.server.routes.get(self.path)
        self.answer(route or (lambda h: h.reply(404, b"no such image")))


def serve(routes: dict[str, Route], host: str = "127.0.0.1") -> AbstractContextManager[_Server]:
    return running(_Server(host, routes))


def image(data: bytes) -> Route:
    return lambda h: h.reply(200, data, Content_Type="image/png")


def redirect(location: Callable[[], str], status: int = 302) -> Route:
    return lambda h: h.reply(status, Location=location())


def status(code: int) -> Route:
    return lambda h: h.reply(code, b"nope")


def stream_without_length(total: int) -> Route:
    """A body delimited by the connection closing, so only counting can stop it."""

    def route(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Connection", "close")
        h.end_headers()
        chunk = b"\x89PNG" + b"\0" * 65532
        sent = 0
        while sent < total and not h.server.release.is_set():
            h.wfile.write(chunk)
            sent += len(chunk)

    return route


def loopback_alias_available() -> bool:
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.2", 0))
    except OSError:
        return False
    return True


# -- the fetch on its own --------------------------------------------------------------------


def fetcher(**overrides: Any) -> ImageFetcher:
    values: dict[str, Any] = dict(
        image_fetch_allow_http=True, image_fetch_allowed_networks=LOOPBACK,
        max_upload_bytes=256 * 1024, image_fetch_timeout_seconds=2.0,
    )
    return ImageFetcher(Settings(**{**values, **overrides}))


def fetch_error(fetch: ImageFetcher, url: str) -> ImageFetchError:
    with pytest.raises(ImageFetchError) as failed:
        fetch.fetch(url)
    return failed.value


def test_fetch_follows_redirects_within_the_rules() -> None:
    data = png_bytes(64, 48)
    routes: dict[str, Route] = {"/a.png": image(data)}
    with serve(routes) as server:
        routes["/hop1"] = redirect(lambda: "/hop2", 301)
        routes["/hop2"] = redirect(lambda: server.url("/a.png"), 307)
        assert fetcher().fetch(server.url("/hop1")) == data


def test_a_redirect_loop_stops() -> None:
    routes: dict[str, Route] = {"/loop": redirect(lambda: "/loop")}
    with serve(routes) as server:
        failed = fetch_error(fetcher(), server.url("/loop"))
        assert server.connections == MAX_REDIRECTS + 1
    assert (failed.code, failed.transient) == ("image_fetch_failed", False)
    assert f"more than {MAX_REDIRECTS} times" in failed.message


def test_a_host_that_does_not_resolve_is_retried() -> None:
    routes: dict[str, Route] = {"/away": redirect(lambda: "https://images.invalid/a.png")}
    with serve(routes) as server:
        failed = fetch_error(fetcher(), server.url("/away"))
    # A name that does not resolve now may later (a DNS outage); the URL is not at fault.
    assert (failed.code, failed.transient) == ("image_fetch_failed", True)
    assert "could not resolve image host 'images.invalid'" in failed.message


def test_the_fetch_applies_the_submit_checks_again() -> None:
    # Settings may differ between the API that took the job and the worker that runs it.
    refused = fetch_error(fetcher(image_fetch_allow_http=False), "http://127.0.0.1:9/a.png")
    assert (refused.code, refused.transient) == ("image_url_refused", False)
    assert "VLMQ_IMAGE_FETCH_ALLOW_HTTP" in refused.message
    refused = fetch_error(fetcher(store_url="file://./objects"), "s3://any-bucket/a.png")
    assert (refused.code, refused.transient) == ("image_url_refused", False)


def test_a_body_without_length_is_cut_at_the_limit() -> None:
    limit = 256 * 1024
    with serve({"/big": stream_without_length(limit * 8)}) as server:
        failed = fetch_error(fetcher(max_upload_bytes=limit), server.url("/big"))
    assert (failed.code, failed.transient) == ("image_too_large", False)
    assert f"more than {limit} bytes; the limit is {limit}" in failed.message


def test_a_body_exactly_at_the_limit_is_read() -> None:
    data = png_bytes(64, 48)
    with serve({"/a.png": image(data)}) as server:
        assert fetcher(max_upload_bytes=len(data)).fetch(server.url("/a.png")) == data
        failed = fetch_error(fetcher(max_upload_bytes=len(data) - 1), server.url("/a.png"))
    assert failed.code == "image_too_large"
    assert f"is {len(data)} bytes" in failed.message  # from Content-Length, before reading


def test_a_dripping_server_is_cut_off_at_the_deadline() -> None:
    with serve({"/slow": drip(100_000)}) as server:
        started = time.monotonic()
        failed = fetch_error(fetcher(image_fetch_timeout_seconds=0.6), server.url("/slow"))
        elapsed = time.monotonic() - started
    assert (failed.code, failed.transient) == ("image_fetch_failed", True)
    assert "timed out after 0.6 s" in failed.message
    assert elapsed < 1.5


@pytest.mark.parametrize(("code", "transient"), [(404, False), (403, False), (410, False),
                                                 (429, True), (500, True), (503, True)])
def test_answers_are_final_or_retried_by_status(code: int, transient: bool) -> None:
    with serve({"/x": status(code)}) as server:
        failed = fetch_error(fetcher(), server.url("/x"))
    assert (failed.code, failed.transient) == ("image_fetch_failed", transient)
    assert f"answered {code} " in failed.message


def test_a_closed_port_is_retried() -> None:
    failed = fetch_error(fetcher(), f"http://127.0.0.1:{closed_port()}/a.png")
    assert (failed.code, failed.transient) == ("image_fetch_failed", True)
    assert "connection refused" in failed.message


# -- through an echo worker ------------------------------------------------------------------


def ensure_bucket(s3: Any, bucket: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
    except s3.exceptions.ClientError:
        s3.create_bucket(Bucket=bucket)


def insert_job(st: Stack, url: str, *more_urls: str) -> uuid.UUID:
    now = utcnow()
    extra = [{"key": None, "url": u, "sha256": None, "bytes": None, "format": None,
              "width": None, "height": None} for u in more_urls]
    job = Job(
        tenant_id="default", model=st.settings.model, prompt="Describe it.", params=PARAMS,
        image_url=url, extra_images=extra or None, status=JobStatus.queued, attempts=0,
        priority=5, created_at=now, runnable_at=now,
    )
    with db_sessions(st.settings)() as session:
        jobs_repo.insert_job(session, job)
        session.commit()
    return job.id


def wait_all_terminal(st: Stack, ids: list[uuid.UUID], timeout: float) -> dict[uuid.UUID, Job]:
    deadline = time.monotonic() + timeout
    while True:
        with db_sessions(st.settings)() as session:
            jobs = {i: jobs_repo.get_job(session, i) for i in ids}
            session.expunge_all()
        if all(j is not None and j.status not in ("queued", "running") for j in jobs.values()):
            return {i: j for i, j in jobs.items() if j is not None}
        if time.monotonic() > deadline:
            pending = {i: j.status for i, j in jobs.items() if j is not None}
            raise TimeoutError(f"not terminal within {timeout}s: {pending}")
        time.sleep(0.2)


def test_jobs_with_image_urls_through_an_echo_worker(stack: Stack, s3: Any) -> None:
    if not loopback_alias_available():
        pytest.skip("127.0.0.2 cannot be bound here")
    tag = uuid.uuid4().hex[:6]
    extra_bucket = f"vlmq-refs-{tag}"
    st = stack.with_env(
        model=f"refs-{tag}", engine="echo", accepted_models=json.dumps([f"refs-{tag}"]),
        image_fetch_allow_http="true", image_fetch_allowed_networks=json.dumps(LOOPBACK),
        image_fetch_allowed_buckets=json.dumps([extra_bucket]),
        image_fetch_timeout_seconds="5", retry_backoff_seconds="0.1",
        retry_backoff_max_seconds="0.2",
        # One 112x84 picture fits, two do not: references reach no total at submit.
        max_job_image_pixels=str(112 * 84 * 3 // 2),
    )
    limit = st.settings.max_upload_bytes
    store_bucket, _ = store_location(st.settings.store_url)
    ensure_bucket(s3, store_bucket)
    ensure_bucket(s3, extra_bucket)
    picture = png_bytes(112, 84, seed=1)
    s3.put_object(Bucket=store_bucket, Key=f"refs-{tag}/cat.png", Body=picture)
    s3.put_object(Bucket=extra_bucket, Key="dog.png", Body=png_bytes(112, 84, seed=2))

    inside_routes: dict[str, Route] = {"/secret.png": image(picture)}
    routes: dict[str, Route] = {
        "/cat.png": image(picture),
        "/missing.png": status(404),
        "/busy.png": status(503),
        "/big.png": image(b"\x89PNG" + b"\0" * limit),
        "/text.png": lambda h: h.reply(200, b"hello, not an image", Content_Type="image/png"),
        "/to-private.png": redirect(lambda: "http://10.0.0.1/a.png"),
    }
    with serve(routes) as server, serve(inside_routes, host="127.0.0.2") as inside:
        routes["/hop.png"] = redirect(lambda: server.url("/cat.png"))
        routes["/to-inside.png"] = redirect(lambda: inside.url("/secret.png"))
        urls = {
            "http": server.url("/cat.png"),
            "redirect": server.url("/hop.png"),
            "s3-store": f"s3://{store_bucket}/refs-{tag}/cat.png",
            "s3-listed": f"s3://{extra_bucket}/dog.png",
            "s3-unlisted": f"s3://vlmq-elsewhere-{tag}/cat.png",
            "s3-missing": f"s3://{extra_bucket}/no-such.png",
            "404": server.url("/missing.png"),
            "to-inside": server.url("/to-inside.png"),
            "to-private": server.url("/to-private.png"),
            "too-big": server.url("/big.png"),
            "not-an-image": server.url("/text.png"),
            "503": server.url("/busy.png"),
        }
        ids = {name: insert_job(st, url) for name, url in urls.items()}
        ids["two-pictures"] = insert_job(st, urls["http"], urls["s3-listed"])
        worker = start_worker(st.env, st.log_dir, name=f"worker-{st.settings.model}")
        try:
            jobs = wait_all_terminal(st, list(ids.values()), timeout=120)
            assert worker.proc.poll() is None, worker.log_text()[-4000:]
        finally:
            worker.stop()
        assert inside.connections == 0  # refused before connecting, not after

    got = {name: jobs[job_id] for name, job_id in ids.items()}
    for name in ("http", "redirect", "s3-store", "s3-listed"):
        job = got[name]
        assert (job.status, job.attempts, job.error_code) == ("succeeded", 1, None), (
            name, job.error_code, job.error_message)
        assert job.prompt_tokens and job.prompt_tokens > 12  # 4x3 patches were seen

    final = {
        "s3-unlisted": ("image_url_refused", "is not one this server reads images from"),
        "s3-missing": ("image_fetch_failed", "there is no object"),
        "404": ("image_fetch_failed", "answered 404 Not Found"),
        "to-inside": ("image_url_refused", "loopback address 127.0.0.2"),
        "to-private": ("image_url_refused", "private address 10.0.0.1"),
        "too-big": ("image_too_large", f"the limit is {limit}"),
        "not-an-image": ("invalid_image", "not an image"),
        "two-pictures": ("images_too_large", "images[1]: the job's images hold 18816 pixels"),
    }
    for name, (code, words) in final.items():
        job = got[name]
        assert (job.status, job.error_code, job.attempts) == ("failed", code, 1), (
            name, job.error_code, job.error_message)
        assert words in (job.error_message or ""), (name, job.error_message)
    assert "redirects to" in (got["to-inside"].error_message or "")

    # 503 is retried until the attempts run out.
    busy = got["503"]
    assert (busy.status, busy.error_code) == ("failed", "image_fetch_failed")
    assert busy.attempts == st.settings.max_attempts
    assert f"(after {st.settings.max_attempts} attempts)" in (busy.error_message or "")

    # The public job object: no upload to describe, the reference instead.
    out = JobOut.from_row(got["http"]).model_dump(mode="json")
    assert out["image"] is None
    assert out["image_url"] == urls["http"]
    assert out["status"] == "succeeded"


def test_the_job_view_of_an_upload_is_unchanged() -> None:
    job = Job(
        id=uuid.uuid4(), tenant_id="default", status=JobStatus.queued, model="m", prompt="p",
        params={}, image_key="images/k", image_sha256="0" * 64, image_bytes=10,
        image_format="PNG", image_width=4, image_height=3, attempts=0, priority=5,
        created_at=utcnow() - timedelta(seconds=1),
    )
    out = JobOut.from_row(job).model_dump(mode="json")
    assert out["image"] == {"sha256": "0" * 64, "bytes": 10, "format": "PNG", "width": 4,
                            "height": 3, "stored": True}
    assert out["image_url"] is None
