"""Where a backfill's items come from, read lazily: a folder (recursive), a glob, an
`s3://bucket/prefix` (listed a page at a time, sent by reference) or a JSONL/CSV manifest
(a path or URL) whose rows may carry their own prompt and generation fields."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff",
                              ".heic", ".heif", ".hif", ".avif"})
# Manifest columns that are generation or scheduling fields of the job.
JOB_FIELDS = frozenset({"prompt", "model", "max_tokens", "temperature", "top_p", "top_k",
                        "seed", "priority"})
_NUMBERS = {"max_tokens": int, "temperature": float, "top_p": float, "top_k": int, "seed": int,
            "priority": int}


@dataclass(frozen=True)
class Item:
    source: str  # what the output line names: a path, or a URL
    path: Path | None = None  # a local file, uploaded
    url: str | None = None  # an s3:// or https:// object, sent by reference
    fields: dict[str, Any] = field(default_factory=dict)  # per-item prompt and fields


def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class S3Access:
    """Where and as whom an s3:// source is listed: the server's own `VLMQ_S3_*` variables,
    so a backfill beside the server reaches the store it does."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> S3Access:
        return cls(endpoint_url=env.get("VLMQ_S3_ENDPOINT_URL") or None,
                   region=env.get("VLMQ_S3_REGION") or "us-east-1",
                   access_key_id=env.get("VLMQ_S3_ACCESS_KEY_ID") or None,
                   secret_access_key=env.get("VLMQ_S3_SECRET_ACCESS_KEY") or None)


def items(source: str, s3: S3Access | None = None) -> Iterator[Item]:
    if source.startswith("s3://"):
        return _s3(source, s3 or S3Access.from_env())
    lowered = source.lower()
    if lowered.endswith((".jsonl", ".csv")):
        return _manifest(source)
    if os.path.isdir(source):
        return _folder(Path(source))
    if any(ch in source for ch in "*?["):
        return (Item(source=p, path=Path(p)) for p in sorted(glob.iglob(source, recursive=True))
                if os.path.isfile(p) and is_image(p))
    raise SystemExit(f"vlmq backfill: {source!r} is not a folder, a glob, an s3:// prefix or a "
                     ".jsonl/.csv manifest")


def _folder(root: Path) -> Iterator[Item]:
    for folder, dirs, files in os.walk(root):
        dirs.sort()  # a stable order, so a resumed run meets items as the first run did
        for name in sorted(files):
            if is_image(name):
                path = Path(folder) / name
                yield Item(source=str(path), path=path)


def _s3(source: str, access: S3Access) -> Iterator[Item]:
    bucket, _, prefix = source.removeprefix("s3://").partition("/")
    pages = _s3_client(access).get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix)
    for page in pages:
        for obj in page.get("Contents", []):
            if is_image(obj["Key"]):
                url = f"s3://{bucket}/{obj['Key']}"
                yield Item(source=url, url=url)


def _s3_client(access: S3Access) -> Any:
    # boto3 is the `s3` extra's, not a dependency: only s3:// sources list a bucket.
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise SystemExit("vlmq backfill: an s3:// source needs boto3 (pip install boto3)"
                         ) from None
    return boto3.client(
        "s3", endpoint_url=access.endpoint_url, region_name=access.region,
        aws_access_key_id=access.access_key_id,
        aws_secret_access_key=access.secret_access_key,
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5,
                      read_timeout=60),
    )


def _manifest(source: str) -> Iterator[Item]:
    text = _read(source)
    rows: Iterator[dict[str, Any]]
    if source.lower().endswith(".csv"):
        rows = csv.DictReader(io.StringIO(text))
    else:
        rows = (json.loads(line) for line in text.splitlines() if line.strip())
    base = Path(source).parent if "://" not in source else None
    for n, row in enumerate(rows, 1):
        image = str(row.get("image") or row.get("path") or row.get("url") or "")
        if not image:
            raise SystemExit(f"vlmq backfill: manifest row {n} has no `image` column")
        fields = {k: _NUMBERS.get(k, str)(v) for k, v in row.items()
                  if k in JOB_FIELDS and v not in (None, "")}
        if "://" in image or image.startswith("data:"):
            yield Item(source=image, url=image, fields=fields)
        else:
            path = Path(image) if base is None or Path(image).is_absolute() else base / image
            yield Item(source=image, path=path, fields=fields)


def _read(source: str) -> str:
    if source.startswith(("http://", "https://")):
        response = httpx.get(source, timeout=60, follow_redirects=True)
        response.raise_for_status()
        return response.text
    return Path(source).read_text()
