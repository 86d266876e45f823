"""`GET /v1/models`: the models that have live workers right now."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.deps import ApiDeps, get_deps
from api.schemas.native import ModelList, ModelOut
from api.services.models import live_models
from shared.timeutil import utcnow

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelList)
def list_models(deps: ApiDeps = Depends(get_deps)) -> ModelList:
    now = utcnow()
    return ModelList(data=[
        ModelOut(id=m.model, workers=m.workers, engines=m.engines, capacity=m.capacity,
                 queued=backlog.queued, running=backlog.running,
                 oldest_queued_seconds=(now - backlog.oldest_queued_at).total_seconds()
                 if backlog.oldest_queued_at else None)
        for m, backlog in live_models(deps.reads, deps.settings)
    ])
