"""Fetching a job's image by reference: an http(s) URL through the SSRF guard, or an S3 object.

Every hop of an http(s) fetch goes through the guard: the host is resolved once and the
connection goes to the checked address. Redirects are followed, up to MAX_REDIRECTS, only
by putting each Location through the guard again, so a public URL cannot redirect the
worker inside. At most max_upload_bytes are read, and the whole fetch, redirects included,
is bounded by image_fetch_timeout_seconds.

Failures carry whether another attempt may succeed: a timeout, a network error, a host
that does not resolve, 408, 429 and 5xx answers, and S3 server errors are transient; a
refused URL, any other 4xx, a missing object, denied access and an oversized image are not.

An s3:// reference is checked here against the server's outer bound (the store's bucket
outside its prefix, VLMQ_IMAGE_FETCH_ALLOWED_BUCKETS), not against the tenant's own
prefixes: those were checked when the job was submitted, by the API that authenticated
the tenant, and a job's URL never changes after. Checking them again would cost a tenant
read on the engine's process for each such job (a claim carries no tenant), to catch only
a prefix withdrawn while the job waited; an operator withdrawing one cancels the tenant's
queued jobs if that matters.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urljoin

import httpx

from shared.net.image_refs import (
    IMAGE_URL,
    HttpImageRef,
    ImageHostUnresolved,
    ImageUrlRefused,
    S3ImageRef,
    check_image_url,
)
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
from shared.net.urls import ResolvedUrl, resolve_public_url
from shared.settings import Settings
from shared.storage import s3_client

USER_AGENT = "vlmq-images/1"
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Answers that say "not now" rather than "never".
_TRANSIENT_STATUSES = frozenset({408, 425, 429})
_S3_MISSING = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
_S3_DENIED = frozenset({"AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId",
                        "SignatureDoesNotMatch", "403"})


class ImageFetchError(Exception):
    """The image could not be had; `code` and `message` go on the job as its error."""

    def __init__(self, code: str, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.transient = transient


def _failed(message: str, *, transient: bool) -> ImageFetchError:
    return ImageFetchError("image_fetch_failed", message, transient=transient)


def _refused(message: str) -> ImageFetchError:
    return ImageFetchError("image_url_refused", message, transient=False)


def _too_large(size: int | None, limit: int) -> ImageFetchError:
    what = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    return ImageFetchError(
        "image_too_large", f"the image at the URL is {what}; the limit is {limit}",
        transient=False,
    )


@dataclass(frozen=True)
class _Answer:
    status: int
    location: str | None
    body: bytes  # only for a 2xx answer: at most max_bytes + 1 bytes


class ImageFetcher:
    """One per worker; thread-safe, as the prepare threads share it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._s3_lock = threading.Lock()
        self._s3: Any = None

    def fetch(self, url: str) -> bytes:
        """The bytes at `url`, at most max_upload_bytes; ImageFetchError otherwise."""
        try:
            ref = check_image_url(url, self.settings)
        except ImageUrlRefused as exc:
            raise _refused(exc.message) from None
        if isinstance(ref, S3ImageRef):
            return self._fetch_s3(ref)
        assert isinstance(ref, HttpImageRef)
        return self._fetch_http(ref.url)

    # -- http(s) ---------------------------------------------------------------------------

    def _fetch_http(self, url: str) -> bytes:
        s = self.settings
        limit = s.max_upload_bytes
        timeout = s.image_fetch_timeout_seconds
        ends = time.monotonic() + timeout
        for hop in range(MAX_REDIRECTS + 1):
            target = self._resolve(url, redirected=hop > 0)
            answer = self._get(target, remaining=ends - time.monotonic(), total=timeout,
                               limit=limit)
            if answer.status in _REDIRECTS:
                if not answer.location:
                    raise _failed(f"the image URL answered {answer.status} without a "
                                  "Location to go to; check the URL", transient=False)
                url = urljoin(target.url, answer.location)
                continue
            if 200 <= answer.status < 300:
                if len(answer.body) > limit:
                    raise _too_large(None, limit)
                return answer.body
            transient = answer.status >= 500 or answer.status in _TRANSIENT_STATUSES
            raise _failed(
                f"the image URL answered {_status_text(answer.status)}; "
                + ("check that the image's server is up" if transient
                   else "check that the URL is right and readable without credentials"),
                transient=transient,
            )
        raise _failed(f"the image URL redirected more than {MAX_REDIRECTS} times; give the "
                      "URL the image is finally at", transient=False)

    def _resolve(self, url: str, *, redirected: bool) -> ResolvedUrl:
        s = self.settings
        try:
            return resolve_public_url(
                url, IMAGE_URL, allow_http=s.image_fetch_allow_http,
                allowed_networks=s.image_fetch_allowed_networks,
            )
        except ImageHostUnresolved as exc:
            raise _failed(exc.message, transient=True) from None
        except ImageUrlRefused as exc:
            message = exc.message
            if redirected:
                message = f"the image URL redirects to {_clip(url)}; {message}"
            raise _refused(message) from None

    def _get(self, target: ResolvedUrl, *, remaining: float, total: float,
             limit: int) -> _Answer:
        if remaining <= 0:
            raise _failed(f"fetching the image failed: {timed_out(total)}", transient=True)
        deadline = Deadline(remaining)
        try:
            answer = self._exchange(target, deadline, timeout=remaining, limit=limit)
            expired = deadline.finish()
        except ImageFetchError:
            deadline.finish()
            raise
        except Exception as exc:
            expired = deadline.finish()
            if not (expired or isinstance(exc, NETWORK_ERRORS)):
                raise
            reason = timed_out(total) if expired else describe_failure(exc, total)
            raise _failed(f"fetching the image failed: {reason}", transient=True) from None
        if expired:
            # A body delimited by the connection closing looks complete once we cut it.
            raise _failed(f"fetching the image failed: {timed_out(total)}", transient=True)
        return answer

    def _exchange(self, target: ResolvedUrl, deadline: Deadline, *, timeout: float,
                  limit: int) -> _Answer:
        headers = {
            "User-Agent": USER_AGENT,
            "Accept": "image/*, */*;q=0.5",
            # The raw bytes are what is counted against the limit and decoded.
            "Accept-Encoding": "identity",
            "Host": host_header(target),
        }
        with pinned_client(timeout, None) as client, client.stream(
            "GET", pinned_url(target), headers=headers,
            extensions=request_extensions(target, deadline),
        ) as response:
            status = response.status_code
            if not 200 <= status < 300:
                return _Answer(status, response.headers.get("location"), b"")
            declared = _content_length(response)
            if declared is not None and declared > limit:
                raise _too_large(declared, limit)
            # One byte past the limit tells an oversized body from one exactly at it.
            return _Answer(status, None, read_limited(response.iter_raw(), limit + 1))

    # -- s3 ----------------------------------------------------------------------------------

    def _fetch_s3(self, ref: S3ImageRef) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        limit = self.settings.max_upload_bytes
        try:
            obj = self._s3_client().get_object(Bucket=ref.bucket, Key=ref.key)
        except ClientError as exc:
            raise _s3_failure(ref, exc) from None
        except BotoCoreError as exc:  # connection errors and timeouts
            raise _failed(f"reading {ref.url} failed: {exc}", transient=True) from None
        body = obj["Body"]
        try:
            declared = obj.get("ContentLength")
            if isinstance(declared, int) and declared > limit:
                raise _too_large(declared, limit)
            data: bytes = body.read(limit + 1)
        except BotoCoreError as exc:
            raise _failed(f"reading {ref.url} failed: {exc}", transient=True) from None
        finally:
            body.close()
        if len(data) > limit:
            raise _too_large(None, limit)
        return data

    def _s3_client(self) -> Any:
        with self._s3_lock:
            if self._s3 is None:
                timeout = self.settings.image_fetch_timeout_seconds
                # The store's endpoint and credentials; the fetch's own time limits.
                self._s3 = s3_client(self.settings, max_attempts=2,
                                     connect_timeout=min(5.0, timeout), read_timeout=timeout)
            return self._s3


def _s3_failure(ref: S3ImageRef, exc: Any) -> ImageFetchError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if code in _S3_MISSING or status == 404:
        return _failed(f"there is no object {ref.url}; check the bucket and key",
                       transient=False)
    if code in _S3_DENIED or status == 403:
        return _failed(f"this server may not read {ref.url} ({code or status}); grant it "
                       "read access or give an https:// URL", transient=False)
    transient = status >= 500 or status in _TRANSIENT_STATUSES or code in (
        "SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable")
    return _failed(f"reading {ref.url} failed: {code or status} {error.get('Message', '')}"
                   .rstrip(), transient=transient)


def _content_length(response: httpx.Response) -> int | None:
    try:
        return int(response.headers["content-length"])
    except (KeyError, ValueError):
        return None


def _status_text(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _clip(url: str, limit: int = 200) -> str:
    return url if len(url) <= limit else url[: limit - 1] + "…"
