"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import ApiDeps, get_deps
from api.errors import RETRY_AFTER_SECONDS

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    # async: answers from the event loop even when every worker thread is busy.
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready: `checks` says which dependency"}})
def readyz(deps: ApiDeps = Depends(get_deps)) -> JSONResponse:
    checks = {"database": _check_db(deps), "broker": _check_broker(deps), "store": _check_store(deps)}
    ready = all(v == "ok" for v in checks.values())
    headers = None if ready else {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return JSONResponse(status_code=200 if ready else 503, headers=headers,
                        content={"ready": ready, "checks": checks})


def _check_db(deps: ApiDeps) -> str:
    try:
        with deps.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:
        return f"error: {exc.__class__.__name__}: {exc}"[:300]


def _check_broker(deps: ApiDeps) -> str:
    try:
        with deps.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return "ok"
    except Exception as exc:
        return f"error: {exc.__class__.__name__}: {exc}"[:300]


def _check_store(deps: ApiDeps) -> str:
    try:
        deps.store.check()
        return "ok"
    except Exception as exc:
        return f"error: {exc}"[:300]
