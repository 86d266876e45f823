"""Intake: the checks every new job passes, and the store of its image, whichever door it
came in by (`POST /v1/jobs`, chat completions, a batch line expanded by the control
process). One service, so a line of a batch is held to exactly what a single job is.

It takes only what it needs, so the API and the control process build one each: the
settings, the object store, a session factory (the live-models check), the tenant's
allowed `s3://` prefixes, and, in the API, a `reserve` that holds a decoded image within
the process's image memory budget. The insert stays with the caller: the API counts it
against the tenant's quota (api/infra/quotas.py), a batch inserts a chunk of lines with its
progress (shared/batches/repo.py). The API's path stays one decode and one object put.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from shared import workers_repo
from shared.chat import decode_data_url
from shared.errors import InvalidInput, Unavailable, quoted
from shared.images import ImageInfo, inspect_image
from shared.jobs.params import GenerationParams
from shared.jobs.structured import check_compiles
from shared.models import Job
from shared.net.image_refs import check_image_url, check_tenant_image_url
from shared.outages import log_failure
from shared.settings import Settings
from shared.storage import ObjectStore

log = logging.getLogger(__name__)

# Holds `pixels` of decoded image within a budget while the image is inspected.
Reserve = Callable[[int], AbstractContextManager[object]]


def no_budget(nbytes: int) -> AbstractContextManager[object]:
    """No image memory budget: a process that inspects one image at a time."""
    return nullcontext()


@dataclass(frozen=True)
class CheckedImage:
    """An image that passed the upload checks (data + info), or a reference (url)."""

    data: bytes | None = None
    info: ImageInfo | None = None
    url: str | None = None

    @property
    def identity(self) -> str:
        return self.info.sha256 if self.info is not None else self.url or ""


@dataclass
class Intake:
    settings: Settings
    store: ObjectStore
    # Plain reads (the live-models check); autocommit in the API.
    reads: sessionmaker[Session]
    # The `s3://bucket/prefix`es a tenant may name as images.
    image_prefixes: Callable[[str], Sequence[str]]
    reserve: Reserve = no_budget

    def check_fields(
        self, prompt: str | None, model: str | None, params: GenerationParams
    ) -> tuple[str, str, dict[str, object]]:
        """The prompt, model and resolved generation parameters, or InvalidInput; a
        structured-output constraint is compiled here, so one the engine would refuse is
        never queued."""
        settings = self.settings
        return (
            _check_prompt(prompt, settings.max_prompt_chars),
            self._check_model(model or settings.model),
            _resolve_params(params, settings.default_max_tokens, settings.max_tokens_limit),
        )

    def check_image(self, data: bytes | None, url: str | None, tenant_id: str) -> CheckedImage:
        """Upload checks for bytes and data: URLs; the static checks for a reference, which
        for s3:// include the prefixes `tenant_id` may name (shared/net/image_refs.py)."""
        settings = self.settings
        if url is not None and not url.startswith("data:"):
            if settings.auth_disabled:  # development: one tenant, the server's bound alone
                check_image_url(url, settings)
            elif url[:5].lower() == "s3://":  # only these need the tenant's prefixes
                check_tenant_image_url(url, settings, tuple(self.image_prefixes(tenant_id)))
            else:
                check_image_url(url, settings)
            return CheckedImage(url=url)
        if url is not None:
            data = decode_data_url(url)
        if data is None:
            raise InvalidInput("an image is required", code="missing_image")
        info = inspect_image(
            data,
            max_bytes=settings.max_upload_bytes,
            max_pixels=settings.max_image_pixels,
            max_side=settings.max_image_side,
            allowed_formats=settings.allowed_formats,
            reserve=self.reserve,
        )
        return CheckedImage(data=data, info=info)

    def store_image(self, job_id: uuid.UUID, image: CheckedImage) -> dict[str, Any]:
        """Puts an uploaded image in the store; the job columns that describe the image.
        Unavailable when the store does not take it."""
        if image.info is None or image.data is None:
            return {"image_url": image.url}
        key = f"images/{job_id}"
        info = image.info
        try:
            self.store.put(key, image.data, info.content_type)
        except Exception as exc:
            log_failure(log, "storing image %s failed", exc, key)
            raise Unavailable("the object store did not take the image; retry shortly") from exc
        return dict(image_key=key, image_sha256=info.sha256, image_bytes=info.size,
                    image_format=info.format, image_width=info.width, image_height=info.height)

    def _check_model(self, model: str) -> str:
        settings = self.settings
        if model == settings.model or model in settings.accepted_models:
            return model
        with self.reads() as session:
            if _storable(model) and workers_repo.is_live(session, model,
                                                         settings.worker_ttl_seconds):
                return model
            live = [m.model for m in workers_repo.live_models(session,
                                                               settings.worker_ttl_seconds)]
        served = sorted({settings.model, *settings.accepted_models, *live})
        raise InvalidInput(
            f"unknown model {quoted(model)}; this server takes jobs for {served} (GET /v1/models)",
            code="unknown_model",
        )


def _check_prompt(prompt: str | None, max_chars: int) -> str:
    if prompt is None or not prompt.strip():
        raise InvalidInput("a non-empty `prompt` is required", code="missing_prompt")
    if len(prompt) > max_chars:
        raise InvalidInput(
            f"the prompt has {len(prompt)} characters; the limit is {max_chars}",
            code="prompt_too_long",
        )
    if "\x00" in prompt:  # Postgres text cannot hold NUL; without this the insert fails as a 503
        raise InvalidInput("the prompt contains a NUL character", code="invalid_prompt")
    return prompt


def _storable(model: str) -> bool:
    """Whether the name fits `jobs.model`; Postgres refuses NUL even in a lookup."""
    return len(model) <= Job.model.type.length and "\x00" not in model


def _resolve_params(params: GenerationParams, default_max: int, limit: int) -> dict[str, object]:
    resolved = params.stored()
    if resolved["max_tokens"] is None:
        resolved["max_tokens"] = default_max
    if resolved["max_tokens"] > limit:
        raise InvalidInput(
            f"max_tokens {resolved['max_tokens']} is above this server's limit {limit}",
            code="max_tokens_too_large",
        )
    check_compiles(resolved)
    return resolved
