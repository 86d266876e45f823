"""Liveness and readiness."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from api.deps import ApiDeps, get_deps
from api.errors import RETRY_AFTER_SECONDS
from api.services.health import ping_broker, ping_database

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])

# Probes ask every few seconds; during an outage one line per dependency this often is enough.
_LOG_EVERY_SECONDS = 60.0
_last_logged: dict[str, float] = {}
_log_lock = threading.Lock()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    # async: answers from the event loop even when every worker thread is busy.
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready: `checks` says which dependency"}})
def readyz(deps: ApiDeps = Depends(get_deps)) -> JSONResponse:
    # Unauthenticated, so each check says only ok or unavailable: driver errors name hosts,
    # ports, roles and buckets. The reason goes to the log.
    checks = {
        "database": _check("database", lambda: ping_database(deps.engine)),
        "broker": _check("broker", lambda: ping_broker(deps.celery)),
        "store": _check("store", deps.store.check),
    }
    ready = all(v == "ok" for v in checks.values())
    headers = None if ready else {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return JSONResponse(status_code=200 if ready else 503, headers=headers,
                        content={"ready": ready, "checks": checks})


def _check(name: str, probe: Callable[[], object]) -> str:
    try:
        probe()
    except Exception as exc:
        _log_failure(name, exc)
        return "unavailable"
    if _last_logged.pop(name, None) is not None:
        log.info("readiness: the %s is reachable again", name)
    return "ok"


def _log_failure(name: str, exc: Exception) -> None:
    now = time.monotonic()
    with _log_lock:
        last = _last_logged.get(name)
        if last is not None and now - last < _LOG_EVERY_SECONDS:
            return
        _last_logged[name] = now
    detail = " ".join(f"{exc.__class__.__name__}: {exc}".split())[:500]
    log.warning("readiness: the %s is unavailable (%s)", name, detail)
