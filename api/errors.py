"""The one place where domain errors become HTTP responses.

A dependency that cannot be reached (database, broker, object store) is the server's
problem and a passing one: every route answers it with 503 `service_unavailable` and a
`Retry-After`, never a 500, so a client retries instead of giving up.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from api.schemas.native import ErrorBody
from shared.errors import Unavailable, VlmqError, clipped
from shared.outages import CLIENT_ERRORS, unreachable

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = Unavailable.retry_after
# A validation error's message names the fields at fault; past these it says how many more
# there are. Pydantic's own messages never quote the input, but locations can hold the
# client's dict keys, and one list can fail item by item.
_MAX_ERRORS_DESCRIBED = 5
_MAX_MESSAGE_CHARS = 200


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route returns; 503 applies to every route."""
    return {status: {"model": ErrorBody, "description": _DESCRIPTIONS[status]}
            for status in statuses}


_DESCRIPTIONS = {
    400: "bad input; `error.code` says what",
    401: "no API key, or one that is unknown or revoked",
    403: "the key is not an admin key, which this operation needs",
    404: "no such object (another tenant's objects are not found either)",
    409: "conflicts with the object's state or an earlier request",
    410: "the object's data was removed (retention or a deletion); its id is kept a while",
    413: "body or image over the size limit",
    415: "not multipart/JSON, or an image format not accepted",
    422: "a field out of range",
    429: "over the tenant's submission rate or active-jobs quota; nothing was stored",
    500: "the job failed here, not because of the request (engine, storage); retry",
    504: "the job did not end in time; it goes on, and `Location` names it for polling",
    503: "a dependency (database, broker, store) is unreachable; retry after `Retry-After`",
}
_RETRY_AFTER = {"description": "seconds to wait", "schema": {"type": "integer"}}
OUTAGE = {503: {
    "model": ErrorBody,
    "description": _DESCRIPTIONS[503],
    "headers": {"Retry-After": _RETRY_AFTER},
}}
UNAUTHENTICATED = {401: {
    "model": ErrorBody,
    "description": _DESCRIPTIONS[401],
    "headers": {"WWW-Authenticate": {"description": "Bearer challenge", "schema": {"type": "string"}}},
}}
_RATE_HEADERS = {
    "Retry-After": _RETRY_AFTER,
    "RateLimit-Limit": {"description": "submissions allowed per window", "schema": {"type": "integer"}},
    "RateLimit-Remaining": {"description": "left in this window", "schema": {"type": "integer"}},
    "RateLimit-Reset": {"description": "seconds until the window resets", "schema": {"type": "integer"}},
}
RATE_LIMITED = {429: {"model": ErrorBody, "description": _DESCRIPTIONS[429], "headers": _RATE_HEADERS}}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"error": {"code": code, "message": message}},
        headers=headers,
    )


def unavailable_response(message: str, retry_after: int = RETRY_AFTER_SECONDS) -> JSONResponse:
    return error_response(503, Unavailable.code, message, {"Retry-After": str(retry_after)})


def describe_validation(exc: ValidationError | RequestValidationError) -> str:
    """Where and what, for the first few errors; never the input itself, which may be huge."""
    errors = exc.errors()
    parts = []
    for err in errors[:_MAX_ERRORS_DESCRIBED]:
        where = ".".join(clipped(str(p)) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {clipped(str(err.get('msg', 'invalid')), _MAX_MESSAGE_CHARS)}")
    if len(errors) > _MAX_ERRORS_DESCRIBED:
        parts.append(f"and {len(errors) - _MAX_ERRORS_DESCRIBED} more")
    return "; ".join(parts)


def _outage_or_500(request: Request, exc: Exception) -> JSONResponse:
    what = unreachable(exc)
    if what is not None:
        log.warning("%s %s: the %s is unreachable (%s: %s)", request.method, request.url.path,
                    what, exc.__class__.__name__, str(exc).splitlines()[0] if str(exc) else "")
        return unavailable_response(f"the {what} is unreachable right now; retry shortly")
    log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "unexpected server error; see the API log")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(VlmqError)
    async def _domain(_: Request, exc: VlmqError) -> JSONResponse:
        if isinstance(exc, Unavailable):
            return unavailable_response(exc.message, exc.retry_after)
        return error_response(exc.http_status, exc.code, exc.message, exc.headers or None)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "validation_error", describe_validation(exc))

    @app.exception_handler(ValidationError)
    async def _validation(_: Request, exc: ValidationError) -> JSONResponse:
        return error_response(422, "validation_error", describe_validation(exc))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's for a JSON body it could not parse
            return error_response(400, "invalid_json", "the body is not valid JSON, or is "
                                  "nested too deeply")
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, clipped(str(exc.detail),
                                                             _MAX_MESSAGE_CHARS))

    async def _dependency(request: Request, exc: Exception) -> JSONResponse:
        return _outage_or_500(request, exc)

    # Handled here rather than by the catch-all below, which Starlette runs outside the
    # app and follows by re-raising (a traceback per request during an outage).
    for error_type in CLIENT_ERRORS:
        app.add_exception_handler(error_type, _dependency)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _outage_or_500(request, exc)
