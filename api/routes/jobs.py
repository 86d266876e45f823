"""/v1/jobs routes: thin, they parse, call a service (api/services/jobs.py) and return
schemas."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from pydantic_core import from_json
from starlette.concurrency import iterate_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.responses import StreamingResponse

from api.auth import authenticate
from api.deps import ApiDeps, get_deps
from api.errors import RATE_LIMITED, documented
from api.openapi import SUBMIT_BODY
from api.schemas.native import (
    GenerationParams,
    ImageSource,
    JobCreate,
    JobDeleted,
    JobList,
    JobOptions,
    JobOut,
    ModelChoice,
    WebhookOptions,
)
from api.services import jobs as jobs_service
from api.services.jobs import accept, admit, idempotency_key, wait_for_end
from api.services.submit import Submission
from shared.chat import MAX_STOP_SEQUENCES
from shared.cursor import encode_cursor
from shared.errors import InvalidInput, UnsupportedMediaType, quoted_list
from shared.jobs import repo as jobs_repo
from shared.jobs.params import MAX_IMAGE_OFFSETS
from shared.jobs.status import JobStatus
from shared.jobs.structured import MAX_CHOICES
from shared.tenancy.repo import Authenticated

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_FORM_PARAMS = set(GenerationParams.model_fields)
_FORM_OPTIONS = set(JobOptions.model_fields)
_FORM_WEBHOOK = set(WebhookOptions.model_fields)
_FORM_FIELDS = _FORM_PARAMS | _FORM_OPTIONS | _FORM_WEBHOOK | {"image", "prompt", "model"}
# Repeated form fields, one value each: `stop`, and `choices` (one label per part).
_FORM_LISTS = {"stop", "choices", "image_offsets"}
_MAX_FORM_FIELDS = len(_FORM_FIELDS) + MAX_STOP_SEQUENCES + MAX_CHOICES + MAX_IMAGE_OFFSETS
# A page of GET /v1/jobs stops early, with a cursor to the rest, once its jobs take this
# many bytes. Every stored field is bounded, so one job is too (about 6 bytes per prompt
# character, escaped, plus 40 KiB, plus a result that max_tokens bounds), and a response is
# at most this plus one job whatever `limit` asks for.
MAX_PAGE_BYTES = 4 * 1024 * 1024
_IMAGE_CHUNK = 256 * 1024
# The bytes are a client's upload: never sniffed as anything but the image they were
# checked to be, and inert even if a browser opens the URL as a page of its own.
_IMAGE_HEADERS = {"X-Content-Type-Options": "nosniff",
                  "Content-Security-Policy": "default-src 'none'; sandbox",
                  "Cache-Control": "private, no-store"}

@router.post(
    "", status_code=202, response_model=JobOut, openapi_extra=SUBMIT_BODY,
    responses={200: {"model": JobOut, "description": "replayed: an earlier submission with "
                     "the same Idempotency-Key"}, **documented(400, 409, 413, 415, 422),
               **RATE_LIMITED},
)
async def create_job(
    request: Request,
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
) -> Response:
    await admit(deps, auth)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        sub = await _from_multipart(request, deps.settings.max_images_per_job)
    elif content_type == "application/json":
        sub = _from_json(await request.body())
    else:
        raise UnsupportedMediaType(
            "send multipart/form-data (image file + prompt) or application/json",
            code="unsupported_media_type",
        )
    sub = replace(sub, idempotency_key=idempotency_key(request),
                  tenant_id=auth.principal.tenant_id, tenant_keep_images=auth.keep_images)
    accepted = await accept(deps, sub)
    headers = {"Location": f"/v1/jobs/{accepted.job.id}"}
    if accepted.replayed:
        headers["Idempotent-Replayed"] = "true"
    # Serialised here, once: the response_model above is for the docs.
    return Response(
        JobOut.from_row(accepted.job).model_dump_json(),
        status_code=200 if accepted.replayed else 202,
        headers=headers,
        media_type="application/json",
    )


@router.get("/{job_id}", response_model=JobOut, responses=documented(404, 410))
async def read_job(
    job_id: uuid.UUID,
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
    wait: Annotated[
        float, Query(ge=0, le=3600, description="long poll: seconds to wait for a terminal status")
    ] = 0,
) -> JobOut:
    wait = min(wait, deps.settings.long_poll_max_seconds)
    return await wait_for_end(deps, job_id, auth.principal.tenant_filter(), wait)


@router.get("/{job_id}/image", responses={**documented(404, 409, 410), 200: {
    "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
    "description": "the uploaded image, as stored, with its own content type",
}})
async def job_image(
    job_id: uuid.UUID,
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
    index: Annotated[int, Query(ge=0, le=63, description="which of the job's `images`, "
                                "from 0 (the first)")] = 0,
) -> StreamingResponse:
    """The job's image (`index`: one of several). 409 `image_by_reference` for an image
    given by URL: vlmq keeps no copy of it, and the job object names where it is."""
    image = await run_in_threadpool(jobs_service.open_image, deps.reads, deps.store, job_id,
                                    auth.principal.tenant_filter(), index)

    def chunks() -> Iterator[bytes]:
        with image.source:
            while block := image.source.read(_IMAGE_CHUNK):
                yield block

    headers = {**_IMAGE_HEADERS,
               "Content-Disposition": f'inline; filename="{image.filename}"'}
    return StreamingResponse(iterate_in_threadpool(chunks()), media_type=image.content_type,
                             headers=headers)


@router.delete("/{job_id}", response_model=JobDeleted, responses=documented(404, 409))
def delete_job(
    job_id: uuid.UUID,
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
) -> JobDeleted:
    """Removes an ended job's image, prompt, result and webhook deliveries; its id, status
    and timestamps answer 410 `expired_data` for VLMQ_TOMBSTONE_SECONDS. A queued or
    running job is 409 `job_not_finished`: cancel it first. Deleting again is no error."""
    jobs_service.delete_job(deps.sessions, deps.store, job_id, auth.principal.tenant_filter())
    return JobDeleted(id=job_id)


@router.post("/{job_id}/cancel", response_model=JobOut, responses=documented(404, 409))
def cancel_job(
    job_id: uuid.UUID,
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
) -> JobOut:
    job = jobs_service.cancel_job(deps.sessions, deps.settings, job_id,
                                  auth.principal.tenant_filter())
    return JobOut.from_row(job)


@router.get("", response_model=JobList, responses=documented(400))
def list_jobs(
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
    status: JobStatus | None = None,
    model: str | None = None,
    tenant: Annotated[str | None, Query(
        description="admin keys only: one tenant's jobs (default: every tenant's)"
    )] = None,
    batch_id: Annotated[str | None, Query(
        max_length=40, description="only the lines of this batch"
    )] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> Response:
    page = jobs_service.list_jobs(deps.reads, auth.principal, status=status, model=model,
                                  tenant=tenant, batch_id=batch_id, limit=limit, cursor=cursor)
    return _page_response(page)


def _page_response(page: jobs_repo.Page) -> Response:
    """The page as JSON, cut short past MAX_PAGE_BYTES with a cursor to the rest.

    Serialised here, each job once: that is how the page's size is known as it grows.
    """
    items: list[bytes] = []
    size = 0
    next_cursor = page.next_cursor
    for job in page.jobs:
        if size >= MAX_PAGE_BYTES:
            last = page.jobs[len(items) - 1]
            next_cursor = encode_cursor(last.created_at, last.id)
            break
        items.append(JobOut.from_row(job).model_dump_json().encode())
        size += len(items[-1])
    body = b'{"data":[%s],"next_cursor":%s}' % (b",".join(items),
                                                 json.dumps(next_cursor).encode())
    return Response(body, media_type="application/json")


async def _from_multipart(request: Request, max_images: int) -> Submission:
    try:
        # One file past the limit, so that many is refused as too_many_images by intake.
        form: FormData = await request.form(max_files=max_images + 1,
                                            max_fields=_MAX_FORM_FIELDS)
    except HTTPException as exc:  # Starlette's wrapping of a malformed multipart body
        if "too many files" in str(exc.detail).lower():
            raise InvalidInput(f"a job takes at most {max_images} images "
                               "(VLMQ_MAX_IMAGES_PER_JOB)", code="too_many_images") from exc
        raise InvalidInput(
            f"malformed multipart body: {exc.detail}", code="invalid_multipart"
        ) from exc
    unknown = set(form.keys()) - _FORM_FIELDS
    if unknown:
        raise InvalidInput(f"unknown form fields: {quoted_list(sorted(unknown))}",
                           code="unknown_field")
    uploads = form.getlist("image")
    if not uploads or not all(isinstance(u, UploadFile) for u in uploads):
        raise InvalidInput("multipart field `image` must be a file", code="missing_image")
    raw: dict[str, object] = {k: form.get(k) for k in _FORM_PARAMS - _FORM_LISTS if k in form}
    for name in _FORM_LISTS & set(form.keys()):
        raw[name] = form.getlist(name)
    if isinstance(raw.get("response_format"), str):
        raw["response_format"] = _json_field("response_format", str(raw["response_format"]))
    params = GenerationParams.model_validate(raw)
    options = JobOptions.model_validate({k: form.get(k) for k in _FORM_OPTIONS if k in form})
    webhook = WebhookOptions.model_validate(_webhook_form(form))
    prompt, model = form.get("prompt"), form.get("model")
    model = ModelChoice.model_validate({"model": model or None}).model
    images = tuple([(await u.read(), None) for u in uploads if isinstance(u, UploadFile)])
    return Submission(
        image=images[0][0],
        images=images if len(images) > 1 else (),
        prompt=prompt if isinstance(prompt, str) else None,
        model=model,
        params=params,
        options=options,
        webhook=webhook,
    )


def _json_field(name: str, value: str) -> object:
    """A form field that holds JSON (`response_format`)."""
    try:
        return from_json(value)
    except ValueError as exc:
        raise InvalidInput(f"form field `{name}` must be JSON ({exc})",
                           code="invalid_json") from exc


def _webhook_form(form: FormData) -> dict[str, object]:
    """webhook_events may repeat or be comma-separated: `job.failed,job.expired`."""
    raw: dict[str, object] = {}
    if "webhook_url" in form:
        raw["webhook_url"] = form.get("webhook_url")
    if "webhook_events" in form:
        raw["webhook_events"] = [
            part.strip()
            for value in form.getlist("webhook_events")
            if isinstance(value, str)
            for part in value.split(",")
            if part.strip()
        ]
    return raw


def _from_json(body: bytes) -> Submission:
    try:
        req = JobCreate.model_validate_json(body)
    except ValidationError as exc:
        raise _json_error(exc) from exc
    sources = req.images if req.images is not None else [req.image] if req.image else []
    if not sources:
        raise InvalidInput('`image` ({"base64": ...}) or `images` is required',
                           code="missing_image")
    named = "images[{}]" if req.images is not None else "image"
    images = tuple((_base64_image(s, named.format(i)), s.url) for i, s in enumerate(sources))
    params = GenerationParams.model_validate(req.model_dump(include=_FORM_PARAMS))
    options = JobOptions.model_validate(req.model_dump(include=_FORM_OPTIONS))
    webhook = WebhookOptions.model_validate(req.model_dump(include=_FORM_WEBHOOK))
    return Submission(
        image=images[0][0], image_url=images[0][1],
        images=images if req.images is not None else (),
        prompt=req.prompt, model=req.model, params=params, options=options, webhook=webhook,
    )


def _base64_image(source: ImageSource, name: str) -> bytes | None:
    """The decoded upload; None for a data:, https:// or s3:// reference (checked by intake)."""
    if source.url is not None:
        return None
    try:
        return base64.b64decode(source.base64 or "", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{name}.base64 is not valid base64", code="invalid_base64") from exc


def _json_error(exc: ValidationError) -> Exception:
    """Give the JSON form the same codes as the multipart form for the same mistakes."""
    errors = exc.errors()
    types = {e["type"] for e in errors}
    if "json_invalid" in types:
        return InvalidInput("the body is not valid JSON", code="invalid_json")
    top_level = [e for e in errors if len(e["loc"]) == 1]
    unknown = sorted(str(e["loc"][0]) for e in top_level if e["type"] == "extra_forbidden")
    if unknown:
        return InvalidInput(f"unknown fields: {quoted_list(unknown)}", code="unknown_field")
    missing = {e["loc"][0] for e in top_level if e["type"] == "missing"}
    if "image" in missing:
        return InvalidInput('`image` ({"base64": ...}) is required', code="missing_image")
    if "prompt" in missing:
        return InvalidInput("a non-empty `prompt` is required", code="missing_prompt")
    return exc
