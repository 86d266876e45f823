"""FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import routes_deliveries, routes_health, routes_jobs, routes_models
from api.body_limit import BodySizeLimit
from api.deps import ApiDeps
from api.errors import OUTAGE, install_error_handlers
from shared.settings import Settings

# Multipart framing and the other form fields around the image.
_BODY_OVERHEAD = 256 * 1024


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        deps = app.state.deps = ApiDeps.build(settings)
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
    )
    install_error_handlers(app)
    app.include_router(routes_health.router)
    for router in (routes_jobs.router, routes_models.router, routes_deliveries.router):
        app.include_router(router, responses=OUTAGE)
    # base64 in JSON inflates the image by 4/3.
    app.add_middleware(
        BodySizeLimit, max_bytes=settings.max_upload_bytes * 4 // 3 + _BODY_OVERHEAD
    )
    return app
