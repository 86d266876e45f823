"""`GET /v1/models`: the models that have live workers right now."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.deps import ApiDeps, get_deps
from api.schemas.native import ModelList, ModelOut
from api.services.models import live_models

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelList)
def list_models(deps: ApiDeps = Depends(get_deps)) -> ModelList:
    live = live_models(deps.reads, deps.settings)
    return ModelList(
        data=[
            ModelOut(id=m.model, workers=m.workers, engines=m.engines, capacity=m.capacity)
            for m in live
        ]
    )
