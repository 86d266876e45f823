"""`GET /v1/models`: the models that have live workers right now."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.deps import ApiDeps, get_deps
from api.schemas.native import ModelList, ModelOut
from shared import workers_repo

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelList)
def list_models(deps: ApiDeps = Depends(get_deps)) -> ModelList:
    with deps.sessions() as session:
        live = workers_repo.live_models(session, deps.settings.worker_ttl_seconds)
    return ModelList(
        data=[
            ModelOut(id=m.model, workers=m.workers, engines=m.engines, capacity=m.capacity)
            for m in live
        ]
    )
