"""`POST /v1/chat/completions` (non-streaming): one request as one job, answered when it ends.

The job goes through the same queue at interactive priority, so an `openai` client pointed
at vlmq gets queueing, priority and the worker's retries unchanged. Past
VLMQ_CHAT_WAIT_SECONDS the answer is a 504 naming the job, which is still running and can
be polled; long work belongs on POST /v1/jobs or /v1/batches.

Every answer about a job that exists says `x-should-retry: false`, which the official
clients honour: their automatic retry of a 5xx would submit a second job. A client that
wants retries to be safe sends an Idempotency-Key, which replays the same job.
"""

from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic_core import from_json

from api.auth import authenticate
from api.deps import ApiDeps, get_deps
from api.errors import RATE_LIMITED, documented
from api.openapi import CHAT_BODY
from api.schemas.native import GenerationParams, JobOptions
from api.services.jobs import accept, admit, idempotency_key, wait_for_end
from api.services.submit import Submission
from shared.batches.output import status_code_for
from shared.chat import completion_object, error_object, parse_chat_request
from shared.errors import InvalidInput
from shared.jobs.status import JobStatus
from shared.tenancy.repo import Authenticated

router = APIRouter(prefix="/v1", tags=["openai"])

@router.post(
    "/chat/completions", openapi_extra=CHAT_BODY,
    responses={200: {"description": "a chat.completion"},
               **documented(400, 409, 413, 422, 500, 504), **RATE_LIMITED},
)
async def chat_completions(
    request: Request,
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
) -> JSONResponse:
    await admit(deps, auth)
    try:
        # pydantic-core's parser, as for every other JSON body: it refuses nesting past
        # 200 levels and lone surrogates (`\ud800`), which no text column can store.
        body = from_json(await request.body())
    except ValueError as exc:
        raise InvalidInput(f"the body is not valid JSON, or is nested too deeply ({exc})",
                           code="invalid_json") from exc
    chat = parse_chat_request(body)
    sub = Submission(
        image=None, image_url=chat.image_url, prompt=chat.prompt, model=chat.model,
        images=tuple((None, url) for url in chat.image_urls) if len(chat.image_urls) > 1 else (),
        params=GenerationParams.model_validate(chat.params),
        options=JobOptions(priority=chat.priority if chat.priority is not None else 5),
        tenant_id=auth.principal.tenant_id, tenant_keep_images=auth.keep_images,
    )
    sub = replace(sub, idempotency_key=idempotency_key(request))
    accepted = await accept(deps, sub)
    job_id = accepted.job.id
    job = await wait_for_end(deps, job_id, auth.principal.tenant_id,
                             deps.settings.chat_wait_seconds)
    headers = {"Location": f"/v1/jobs/{job_id}", "x-should-retry": "false"}
    if job.status == JobStatus.succeeded and job.result is not None:
        return JSONResponse(completion_object(
            job_id=job_id.hex, model=job.model, created=int(job.created_at.timestamp()),
            text=job.result.text, finish_reason=job.result.finish_reason,
            prompt_tokens=job.result.prompt_tokens,
            completion_tokens=job.result.completion_tokens,
        ), headers=headers)
    if job.status == JobStatus.failed and job.error is not None:
        return JSONResponse(error_object(job.error.code, job.error.message),
                            status_code=status_code_for(job.error.code), headers=headers)
    if job.status == JobStatus.cancelled:
        return JSONResponse(error_object("job_cancelled", f"job {job_id} was cancelled"),
                            status_code=409, headers=headers)
    return JSONResponse(error_object(
        "chat_timeout",
        f"job {job_id} is still {job.status.value} after {deps.settings.chat_wait_seconds:g} s;"
        f" poll GET /v1/jobs/{job_id}?wait=60 for its result, and send long or bulk work to "
        "POST /v1/jobs or /v1/batches",
    ), status_code=504, headers=headers)
