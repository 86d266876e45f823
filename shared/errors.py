"""Domain errors. Each carries a stable code; api/errors.py maps them to HTTP."""

from __future__ import annotations


class VlmqError(Exception):
    code = "internal_error"
    http_status = 500

    def __init__(self, message: str, *, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = headers or {}


class InvalidInput(VlmqError):
    """The client sent something we refuse; `code` says what."""

    code = "invalid_request"
    http_status = 400


class PayloadTooLarge(InvalidInput):
    code = "payload_too_large"
    http_status = 413


class UnsupportedMediaType(InvalidInput):
    code = "unsupported_image_format"
    http_status = 415


class Unauthenticated(VlmqError):
    """No API key, or one that is unknown or revoked."""

    code = "unauthorized"
    http_status = 401


class RateLimited(VlmqError):
    """Over a tenant's rate limit or quota; nothing was stored. Headers say when to retry."""

    code = "rate_limited"
    http_status = 429


class Forbidden(VlmqError):
    """The key is valid but may not do this (an admin-only operation)."""

    code = "forbidden"
    http_status = 403


class NotFound(VlmqError):
    code = "not_found"
    http_status = 404


class Conflict(VlmqError):
    code = "conflict"
    http_status = 409


class Gone(VlmqError):
    """The object existed, but retention or a deletion removed its data."""

    code = "expired_data"
    http_status = 410


class Unavailable(VlmqError):
    """A dependency (store, DB, broker) is down; the client may retry after `retry_after` s."""

    code = "service_unavailable"
    http_status = 503
    retry_after = 1


# How much of a client's value an error message quotes: enough to recognise it, never so
# much that a refusal of a huge field is itself huge.
QUOTE_CHARS = 64
QUOTE_ITEMS = 8


def clipped(text: str, limit: int = QUOTE_CHARS) -> str:
    """`text` cut to its first `limit` characters, marked when cut."""
    return text if len(text) <= limit else text[:limit] + "…"


def quoted(value: object, limit: int = QUOTE_CHARS) -> str:
    """`value` for an error message: a string's or a scalar's repr, of at most about
    `limit` characters of it, and only the kind of a container (whose repr could be huge,
    or too deeply nested to make)."""
    if isinstance(value, str):
        return repr(clipped(value, limit))
    if value is None or isinstance(value, bool | int | float):
        return clipped(repr(value), limit)
    return f"a {type(value).__name__}"


def quoted_list(values: list[str], most: int = QUOTE_ITEMS) -> str:
    """The first `most` of `values`, each quoted, and how many more there are."""
    shown = ", ".join(quoted(v) for v in values[:most])
    return shown if len(values) <= most else f"{shown} and {len(values) - most} more"
