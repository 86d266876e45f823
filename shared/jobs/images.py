"""Where a job's images live in the object store, and which keys a job row names.

The first image is `images/<job id>` (as for every job of one image); the n-th image after
it is `images/<job id>.<n>`, n = 1, 2, ..., described in the row's `extra_images`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from shared.settings import LimitsSettings

PREFIX = "images/"
_KEY = re.compile(r"images/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
                  r"(?:\.([1-9][0-9]{0,2}))?")


def image_key(job_id: uuid.UUID | str, index: int = 0) -> str:
    """The key of the job's image at `index` in prompt order (0: the first)."""
    return f"{PREFIX}{job_id}" if index == 0 else f"{PREFIX}{job_id}.{index}"


def job_of_key(key: str) -> uuid.UUID | None:
    """The job a key of ours belongs to; None for a key we never write."""
    match = _KEY.fullmatch(key)
    return uuid.UUID(match.group(1)) if match else None


def stored_keys(image_key: str | None,
                extra_images: Sequence[Mapping[str, Any]] | None) -> list[str]:
    """Every key the row still names, first image first."""
    keys = [image_key] if image_key is not None else []
    keys.extend(str(e["key"]) for e in extra_images or () if e.get("key"))
    return keys


def without_keys(extra_images: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]] | None:
    """`extra_images` once their objects are removed: the descriptions stay, the keys go."""
    if extra_images is None:
        return None
    return [{**e, "key": None} for e in extra_images]


def job_images_bytes(limits: LimitsSettings) -> int:
    """The most bytes one job's images may take together: what a request or a batch line
    must have room for (each image within VLMQ_MAX_UPLOAD_BYTES, all of them within
    VLMQ_MAX_JOB_IMAGE_BYTES)."""
    return max(limits.max_upload_bytes,
               min(limits.max_upload_bytes * limits.max_images_per_job,
                   limits.max_job_image_bytes))
