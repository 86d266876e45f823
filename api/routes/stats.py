"""`GET /v1/stats/throughput`: images and tokens finished per minute, for the console's plots."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from api.auth import authenticate
from api.deps import ApiDeps, get_deps
from api.schemas.stats import MinuteOut, Throughput
from api.services.stats import throughput_per_minute
from shared.chat import MAX_MODEL_CHARS
from shared.tenancy.repo import Authenticated

router = APIRouter(prefix="/v1/stats", tags=["stats"])


@router.get("/throughput", response_model=Throughput)
def throughput(
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
    minutes: Annotated[int, Query(ge=1, le=1440, description="how far back")] = 60,
    model: Annotated[str | None, Query(max_length=MAX_MODEL_CHARS)] = None,
    tenant: Annotated[str | None, Query(
        max_length=64, description="admin keys only: one tenant's (default: every tenant's)"
    )] = None,
) -> Throughput:
    """The caller's tenant's succeeded jobs (an admin key: every tenant's) per minute."""
    rows = throughput_per_minute(deps.reads, auth.principal, minutes=minutes, model=model,
                                 tenant=tenant)
    return Throughput(minutes=minutes, model=model, data=[
        MinuteOut(start=m.start, images=m.images, prompt_tokens=m.prompt_tokens,
                  completion_tokens=m.completion_tokens) for m in rows])
