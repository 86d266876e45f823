"""The S3 store behind a stack, reached directly with boto3, as an outside actor would: to
put objects the service is asked to read, tamper with its own, or count what it left."""

from __future__ import annotations

from typing import Any

import boto3

from shared.settings import Settings


def s3_client(settings: Settings) -> Any:
    """A boto3 S3 client with the same endpoint, region and credentials as the services."""
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=settings.s3_secret_access_key,
    )


def store_location(store_url: str) -> tuple[str, str]:
    """The bucket and key prefix of a store URL (`s3://bucket/prefix`)."""
    bucket, _, prefix = store_url.removeprefix("s3://").partition("/")
    return bucket, prefix


def count_objects(s3: Any, store_url: str) -> int:
    """How many objects lie under the store's prefix; paged, as a bucket may hold more
    than one listing returns."""
    bucket, prefix = store_location(store_url)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sum(page.get("KeyCount", 0) for page in pages)
