"""Images given by reference: which URLs a job may name, checked without any network use.

A job's image is either uploaded or named by `image_url`, which the worker running the job
fetches: `https://…` (plain http only in development) through the same SSRF guard as
webhooks, or `s3://bucket/key` with the store's S3 settings. The API checks a reference
here when the job is submitted, to refuse at once what no worker would fetch; the worker
checks again before fetching, as settings may differ between processes and a job can wait.

As the worker reads s3:// objects with the server's own credentials, which may reach other
tenants' objects, a tenant may name only objects under the `s3://bucket/prefix`es an
operator allowed it (none by default), and only inside the server's outer bound (the
store's bucket outside its prefix, and VLMQ_IMAGE_FETCH_ALLOWED_BUCKETS): it needs both.
The tenant's refusal is one message whatever the object, and nothing is looked up, so it
says nothing about which objects exist.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

from shared.errors import InvalidInput
from shared.net.urls import MAX_URL_LENGTH, UrlKind, check_public_url
from shared.settings import Settings, StoreSettings

# S3's rules for bucket names (lower case, digits, dots, hyphens; 3 to 63 characters).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_HINT = "give an https:// URL or s3://bucket/key, or upload the image"


class ImageUrlRefused(InvalidInput):
    code = "image_url_refused"


class ImageHostUnresolved(ImageUrlRefused):
    """The host name did not resolve when the worker looked it up; it may later."""


IMAGE_URL = UrlKind(
    noun="image URL",
    host_noun="image host",
    allow_http_setting="VLMQ_IMAGE_FETCH_ALLOW_HTTP",
    allowed_networks_setting="VLMQ_IMAGE_FETCH_ALLOWED_NETWORKS",
    refused=ImageUrlRefused,
    unresolved=ImageHostUnresolved,
)


@dataclass(frozen=True)
class HttpImageRef:
    url: str


@dataclass(frozen=True)
class S3ImageRef:
    bucket: str
    key: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


ImageRef = HttpImageRef | S3ImageRef


def check_image_url(url: str, settings: Settings) -> ImageRef:
    """What `url` names, or ImageUrlRefused saying why no worker would fetch it.

    `settings` whole: the image-fetch rules, and for s3:// the store's bucket and prefix.

    Host names are not resolved here (that happens, and is checked, at fetch time); an IP
    literal host is checked against the private-address rules now.
    """
    if len(url) > MAX_URL_LENGTH:
        raise ImageUrlRefused(
            f"image URL is longer than {MAX_URL_LENGTH} characters; use a shorter URL"
        )
    scheme, colon, _ = url.partition(":")
    scheme = scheme.lower() if colon else ""
    if scheme in ("https", "http"):
        check_public_url(
            url, IMAGE_URL, allow_http=settings.image_fetch_allow_http,
            allowed_networks=settings.image_fetch_allowed_networks,
        )
        return HttpImageRef(url)
    if scheme == "s3":
        return _s3_ref(url, settings)
    raise ImageUrlRefused(f"image URL scheme {scheme or '(none)'!r} is not supported; {_HINT}")


def check_tenant_image_url(url: str, settings: Settings, prefixes: Sequence[str]) -> ImageRef:
    """check_image_url, and for s3:// also that the object is under one of the tenant's
    allowed `prefixes` (canonical, see canonical_prefix); refused the same way otherwise."""
    scheme, colon, _ = url.partition(":")
    if colon and scheme.lower() == "s3" and len(url) <= MAX_URL_LENGTH:
        ref = _parse_s3(url)
        if store_location(settings) is not None and not _allowed(ref, prefixes):
            raise ImageUrlRefused(
                "this tenant may not name s3:// images there (it may name those under: "
                f"{', '.join(prefixes) or 'no prefix yet'}); an operator allows prefixes per "
                "tenant with `vlmq keys limits --image-url-prefix`; give an https:// URL or "
                "upload the image"
            )
    return check_image_url(url, settings)


def canonical_prefix(text: str) -> str:
    """`s3://bucket/path/` as compared with keys (a whole bucket is `s3://bucket/`), or
    InvalidInput. The path ends in '/', so a prefix matches whole segments only:
    `s3://b/team-a` allows `s3://b/team-a/x`, never `s3://b/team-ab/x`."""
    if not text.startswith("s3://"):
        raise InvalidInput(f"{text!r} is not an s3://bucket/prefix", code="invalid_prefix")
    bucket, _, path = text[len("s3://"):].partition("/")
    if not _BUCKET.match(bucket):
        raise InvalidInput(f"{bucket!r} is not a valid S3 bucket name", code="invalid_prefix")
    path = path.strip("/")
    if path:
        _check_key(path)
        if "//" in path:
            raise InvalidInput(f"{text!r} has an empty path segment", code="invalid_prefix")
        path += "/"
    return f"s3://{bucket}/{path}"


def _allowed(ref: S3ImageRef, prefixes: Sequence[str]) -> bool:
    for prefix in prefixes:
        try:
            bucket, _, path = canonical_prefix(prefix)[len("s3://"):].partition("/")
        except InvalidInput:
            continue  # a value written by hand into the database: it allows nothing
        if ref.bucket == bucket and ref.key.startswith(path):
            return True
    return False


def store_location(store: StoreSettings) -> tuple[str, str] | None:
    """The store's (bucket, key prefix) as make_store reads VLMQ_STORE_URL; None if not S3."""
    parsed = urlparse(store.store_url)
    if parsed.scheme != "s3":
        return None
    prefix = parsed.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return parsed.netloc, prefix


def _parse_s3(url: str) -> S3ImageRef:
    """The bucket and key of an s3:// URL, checked for form only."""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise ImageUrlRefused("image URL contains control characters; percent-encode them")
    # Split by hand: a key may hold '?' and '#', which a URL parser would cut off.
    bucket, _, key = url[len("s3://"):].partition("/")
    if not _BUCKET.match(bucket):
        raise ImageUrlRefused(f"{bucket!r} is not a valid S3 bucket name; use s3://bucket/key")
    if not key:
        raise ImageUrlRefused(f"{url!r} names no object; use s3://bucket/key")
    try:
        _check_key(key)
    except InvalidInput as exc:
        raise ImageUrlRefused(exc.message) from None
    return S3ImageRef(bucket=bucket, key=key)


# Percent-encoded '.', '/' and '\': a server or proxy that decodes a key twice would see
# segments that the checks here never saw.
_ENCODED_SEPARATORS = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)


def _check_key(key: str) -> None:
    # Some S3-compatible servers and proxies collapse these, which could carry a key that
    # passed a prefix check into another prefix: the server's own objects or another
    # tenant's.
    if any(part in (".", "..") for part in key.split("/")):
        raise InvalidInput("an s3:// image key may not contain '.' or '..' segments",
                           code="invalid_prefix")
    if "\\" in key or _ENCODED_SEPARATORS.search(key):
        raise InvalidInput("an s3:// image key may not contain '\\' or a percent-encoded "
                           "'.', '/' or '\\'", code="invalid_prefix")


def _s3_ref(url: str, settings: Settings) -> S3ImageRef:
    ref = _parse_s3(url)
    bucket, key = ref.bucket, ref.key
    store = store_location(settings)
    if store is None:
        raise ImageUrlRefused(
            "this server keeps its objects in a local folder, not S3, so it reads no s3:// "
            "image URLs; give an https:// URL or upload the image"
        )
    store_bucket, store_prefix = store
    if bucket not in (store_bucket, *settings.image_fetch_allowed_buckets):
        raise ImageUrlRefused(
            f"bucket {bucket!r} is not one this server reads images from; put the image in "
            "an allowed bucket (the operator lists them in VLMQ_IMAGE_FETCH_ALLOWED_BUCKETS), "
            "give an https:// URL or upload the image"
        )
    # Under the store's prefix are the server's own objects: other tenants' uploads and files.
    if bucket == store_bucket and key.startswith(store_prefix):
        where = f"under {store_prefix!r} " if store_prefix else ""
        raise ImageUrlRefused(
            f"objects {where}in bucket {bucket!r} are this server's own and cannot be named "
            "as an image URL; put the image elsewhere, or upload it"
        )
    return ref
