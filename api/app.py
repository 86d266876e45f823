"""FastAPI application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from api.auth import authenticate
from api.console import install_console
from api.deps import ApiDeps
from api.docs import install_docs
from api.errors import OUTAGE, UNAUTHENTICATED, install_error_handlers
from api.infra.body_limit import BodySizeLimit
from api.infra.http_limits import HeaderLimits
from api.infra.image_budget import release_freed_pixels
from api.infra.metrics import ApiMetrics, RequestMetrics
from api.openapi import install_openapi
from api.routes import (
    batches,
    chat,
    deliveries,
    files,
    health,
    jobs,
    keys,
    models,
    stats,
    usage,
)
from shared.jobs.images import job_images_bytes
from shared.settings import Settings

log = logging.getLogger(__name__)

# Multipart framing and the other form fields around the image.
_BODY_OVERHEAD = 256 * 1024


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = ApiMetrics()
    release_freed_pixels()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.auth_disabled:
            log.warning("authentication is OFF (VLMQ_AUTH_DISABLED): anyone who reaches this "
                        "API acts as an admin of tenant 'default'; for local development only")
        deps = app.state.deps = ApiDeps.build(settings, metrics)
        await deps.start()
        try:
            yield
        finally:
            await deps.close()

    app = FastAPI(
        title="vlmq",
        version="0.1.0",
        description="Queue-based async inference for vision-language models.",
        lifespan=lifespan,
        # Starlette builds the redirect for `/v1/jobs/` from the Host header, so anyone could
        # make this API answer with a redirect to their own site; no route ends in a slash.
        redirect_slashes=False,
        # api/docs.py serves them with their assets from the API, not from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    install_openapi(app)
    install_docs(app)
    install_console(app)
    app.include_router(health.router)
    for router in (jobs.router, models.router, deliveries.router,
                   files.router, batches.router, chat.router, keys.router, stats.router,
                   usage.router):
        # At the router, so no /v1 route can be added without a key check.
        app.include_router(router, responses={**UNAUTHENTICATED, **OUTAGE},
                           dependencies=[Depends(authenticate)])
    # base64 in JSON inflates the images by 4/3.
    app.add_middleware(
        BodySizeLimit, max_bytes=job_images_bytes(settings) * 4 // 3 + _BODY_OVERHEAD,
        larger={"/v1/files": settings.max_file_bytes + _BODY_OVERHEAD},
    )
    app.add_middleware(HeaderLimits, max_headers=settings.api_max_headers,
                       max_bytes=settings.api_max_header_bytes)
    # Outermost, so a body refused by the limits above is counted too.
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app
