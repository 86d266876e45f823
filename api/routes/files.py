"""/v1/files: batch input files in, batch output files out; streamed both ways."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from starlette.concurrency import iterate_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.responses import StreamingResponse

from api.auth import authenticate
from api.deps import ApiDeps, get_deps
from api.errors import RATE_LIMITED, documented
from api.openapi import FILE_UPLOAD_BODY
from api.schemas.openai import FileDeleted, FileList, FileObject
from api.services import files as service
from shared.errors import InvalidInput
from shared.retention.policy import retention
from shared.tenancy.repo import Authenticated

router = APIRouter(prefix="/v1/files", tags=["files"])

_PURPOSES = ("batch",)
_STREAM_CHUNK = 256 * 1024
# How the openai client sends `expires_after` in a multipart form (its nested-dict style).
_ANCHOR_FIELD = "expires_after[anchor]"
_SECONDS_FIELD = "expires_after[seconds]"
_DIGITS = re.compile(r"^[0-9]{1,12}$")


@router.post("", response_model=FileObject, openapi_extra=FILE_UPLOAD_BODY,
             responses={**documented(400, 413), **RATE_LIMITED})
async def upload_file(
    request: Request,
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
) -> FileObject:
    await run_in_threadpool(deps.limits.admit_file, auth)  # the rate, before the body is read
    try:
        # Starlette spools each file part to disk past 1 MB: a large file never sits in memory.
        form = await request.form(max_files=1, max_fields=4)
    except (HTTPException, AssertionError) as exc:
        raise InvalidInput("send multipart/form-data with `file` and `purpose`",
                           code="invalid_multipart") from exc
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, UploadFile):
        raise InvalidInput("multipart field `file` must be a file", code="missing_file")
    if purpose not in _PURPOSES:
        raise InvalidInput(f"purpose must be one of {', '.join(_PURPOSES)}",
                           code="invalid_purpose")
    seconds = _expires_after(form)
    # Without its own expiry a file is kept as long as its tenant's data.
    keep = (retention(auth.retention_seconds, deps.settings.retention_seconds)
            if seconds is None else timedelta(seconds=seconds))
    row = await run_in_threadpool(
        service.add_file, deps.sessions, deps.store, tenant_id=auth.principal.tenant_id,
        purpose=str(purpose), filename=upload.filename, source=upload.file,
        size=upload.size if upload.size is not None else 0, keep=keep,
    )
    return FileObject.from_row(row)


def _expires_after(form: FormData) -> int | None:
    """The seconds of the form's `expires_after`, or None without one. Any other spelling
    of it is refused rather than ignored: a client that meant an expiry gets one or an
    error, never a file kept for the default time."""
    stray = [k for k in form if k.startswith("expires_after")
             and k not in (_ANCHOR_FIELD, _SECONDS_FIELD)]
    anchor, seconds = form.get(_ANCHOR_FIELD), form.get(_SECONDS_FIELD)
    if stray or (anchor is None) != (seconds is None):
        raise InvalidInput(f"send expires_after as the two fields {_ANCHOR_FIELD} and "
                           f"{_SECONDS_FIELD}, as the openai client does",
                           code="invalid_expires_after")
    if anchor is None:
        return None
    if isinstance(seconds, str) and _DIGITS.match(seconds):
        seconds = int(seconds)  # a form field is text; the bounds are checked as a number
    return service.expires_after_seconds("expires_after", anchor, seconds)


@router.get("", response_model=FileList)
def list_files(
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: Annotated[str | None, Query(max_length=40)] = None,
) -> FileList:
    rows, more = service.list_files(deps.reads, auth.principal.tenant_filter(), purpose,
                                    limit, after)
    data = [FileObject.from_row(r) for r in rows]
    return FileList(data=data, first_id=data[0].id if data else None,
                    last_id=data[-1].id if data else None, has_more=more)


@router.get("/{file_id}", response_model=FileObject, responses=documented(404, 410))
def read_file(
    file_id: str,
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
) -> FileObject:
    return FileObject.from_row(service.get_file(deps.reads, file_id,
                                                auth.principal.tenant_filter()))


@router.get("/{file_id}/content", responses={**documented(404, 410), 200: {
    "content": {"application/octet-stream": {"schema": {"type": "string",
                                                         "format": "binary"}}},
    "description": "the file's bytes",
}})
async def file_content(
    file_id: str,
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
) -> StreamingResponse:
    source = await run_in_threadpool(service.open_content, deps.reads, deps.store, file_id,
                                     auth.principal.tenant_filter())

    def chunks() -> Iterator[bytes]:
        with source:
            while block := source.read(_STREAM_CHUNK):
                yield block

    return StreamingResponse(iterate_in_threadpool(chunks()),
                             media_type="application/octet-stream")


@router.delete("/{file_id}", response_model=FileDeleted, responses=documented(404, 409))
def delete_file(
    file_id: str,
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
) -> FileDeleted:
    """Refused while a batch not yet ended reads the file: its lines come from it until the
    batch's output is written."""
    service.delete_file(deps.sessions, deps.store, file_id, auth.principal.tenant_filter())
    return FileDeleted(id=file_id, deleted=True)
