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
from shared.errors import InvalidInput, PayloadTooLarge, Unavailable, VlmqError, quoted
from shared.images import ImageInfo, inspect_image
from shared.jobs.images import image_key
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
# One image as given: bytes (an upload, base64 decoded), or a URL (data:, https://, s3://).
ImageInput = tuple[bytes | None, str | None]


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
        self, prompt: str | None, model: str | None, params: GenerationParams, images: int = 1
    ) -> tuple[str, str, dict[str, object]]:
        """The prompt, model and resolved generation parameters for a job of `images`
        images, or InvalidInput; a structured-output constraint is compiled here, so one
        the engine would refuse is never queued."""
        settings = self.settings
        prompt = _check_prompt(prompt, settings.max_prompt_chars)
        model = self._check_model(model or settings.model)
        resolved = _resolve_params(params, settings.default_max_tokens,
                                   settings.max_tokens_limit)
        _check_image_offsets(params.image_offsets, prompt, images)
        return prompt, model, resolved

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

    def check_images(self, given: Sequence[ImageInput], tenant_id: str) -> list[CheckedImage]:
        """check_image for each of a job's images, in order, and their totals: at most
        VLMQ_MAX_IMAGES_PER_JOB, VLMQ_MAX_JOB_IMAGE_BYTES and VLMQ_MAX_JOB_IMAGE_PIXELS
        together. The images are inspected one after another, each holding its share of
        the image memory budget only while it is inspected, so a job of eight images needs
        no more of it at once than its largest image. An error names the image at fault
        (`images[2]: ...`) when there are several."""
        settings = self.settings
        if not given:
            raise InvalidInput("an image is required", code="missing_image")
        limit = settings.max_images_per_job
        if len(given) > limit:
            raise InvalidInput(f"{len(given)} images; a job takes at most {limit} "
                               "(VLMQ_MAX_IMAGES_PER_JOB)", code="too_many_images")
        checked: list[CheckedImage] = []
        total_bytes = total_pixels = 0
        for index, (data, url) in enumerate(given):
            try:
                image = self.check_image(data, url, tenant_id)
            except VlmqError as exc:
                if len(given) == 1:
                    raise
                raise type(exc)(f"images[{index}]: {exc.message}", code=exc.code,
                                headers=exc.headers) from exc
            if image.info is not None:
                total_bytes += image.info.size
                total_pixels += image.info.width * image.info.height
            if total_bytes > settings.max_job_image_bytes:
                raise PayloadTooLarge(
                    f"images[0..{index}] take {total_bytes} bytes together; a job's images "
                    f"may take {settings.max_job_image_bytes} (VLMQ_MAX_JOB_IMAGE_BYTES)",
                    code="images_too_large")
            if total_pixels > settings.max_job_image_pixels:
                raise PayloadTooLarge(
                    f"images[0..{index}] hold {total_pixels} pixels together; a job's images "
                    f"may hold {settings.max_job_image_pixels} (VLMQ_MAX_JOB_IMAGE_PIXELS)",
                    code="images_too_large")
            checked.append(image)
        return checked

    def store_image(self, job_id: uuid.UUID, image: CheckedImage) -> dict[str, Any]:
        """Puts an uploaded image in the store; the job columns that describe the image.
        Unavailable when the store does not take it."""
        return self.store_images(job_id, [image])

    def store_images(self, job_id: uuid.UUID, images: Sequence[CheckedImage]) -> dict[str, Any]:
        """Puts a job's uploaded images in the store (images/<id>, images/<id>.1, ...);
        the job columns that describe them: the first in the image_* columns, the rest in
        `extra_images`. Unavailable when the store does not take one, with those already
        put removed again, so a refused job leaves no object behind."""
        put: list[str] = []
        entries: list[dict[str, Any]] = []
        for index, image in enumerate(images):
            entry: dict[str, Any] = {"key": None, "url": image.url, "sha256": None,
                                     "bytes": None, "format": None, "width": None,
                                     "height": None}
            if image.info is not None and image.data is not None:
                key = image_key(job_id, index)
                info = image.info
                try:
                    self.store.put(key, image.data, info.content_type)
                except Exception as exc:
                    log_failure(log, "storing image %s failed", exc, key)
                    self.delete_quietly(put)
                    raise Unavailable("the object store did not take the image; retry "
                                      "shortly") from exc
                put.append(key)
                entry.update(key=key, url=None, sha256=info.sha256, bytes=info.size,
                             format=info.format, width=info.width, height=info.height)
            entries.append(entry)
        first = entries[0]
        columns: dict[str, Any] = {"image_url": first["url"]} if first["key"] is None else dict(
            image_key=first["key"], image_sha256=first["sha256"], image_bytes=first["bytes"],
            image_format=first["format"], image_width=first["width"],
            image_height=first["height"])
        if len(entries) > 1:
            columns["extra_images"] = entries[1:]
        return columns

    def delete_quietly(self, keys: Sequence[str]) -> None:
        """Removes images no job will name; a failure leaves them to the orphan sweep."""
        for key in keys:
            try:
                self.store.delete(key)
            except Exception as exc:
                log.warning("could not delete orphaned image %s: %s: %s", key,
                            exc.__class__.__name__, exc)

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


def _check_image_offsets(offsets: list[int] | None, prompt: str, images: int) -> None:
    if offsets is None:
        return
    if len(offsets) != images:
        raise InvalidInput(f"image_offsets has {len(offsets)} number(s) for {images} "
                           "image(s); give one per image", code="invalid_image_offsets")
    if offsets[-1] > len(prompt):
        raise InvalidInput(f"image_offsets: {offsets[-1]} is past the prompt's end (it has "
                           f"{len(prompt)} characters)", code="invalid_image_offsets")


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
