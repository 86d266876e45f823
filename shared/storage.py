"""Object storage for uploaded images and files: S3-compatible (AWS, MinIO) or a folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast
from urllib.parse import urlparse

from shared.errors import Unavailable
from shared.settings import StoreSettings

_CHUNK = 1024 * 1024


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...
    def get(self, key: str) -> bytes: ...
    # Streamed both ways, so a file of hundreds of MB is never held in memory whole.
    def put_file(self, key: str, source: BinaryIO, content_type: str) -> None: ...
    def open(self, key: str) -> BinaryIO: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def check(self) -> None:
        """Raise Unavailable when the store cannot be reached."""
        ...


class LocalStore:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        # Keys are ours ("images/<uuid>"); a lexical check is enough and saves the stat
        # per path component that resolve() costs on every read.
        path = os.path.normpath(os.path.join(self.root, key))
        if not path.startswith(f"{self.root}{os.sep}"):
            raise ValueError(f"object key escapes the store: {key!r}")
        return Path(path)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename so a reader never sees half an object.
        fd, tmp = tempfile.mkstemp(dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def put_file(self, key: str, source: BinaryIO, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            shutil.copyfileobj(source, fh, _CHUNK)
        os.replace(tmp, path)

    def open(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise Unavailable(f"object folder {self.root} is not writable")


def s3_client(store: StoreSettings, *, max_attempts: int = 3, connect_timeout: float = 5,
              read_timeout: float = 60) -> Any:
    """A boto3 S3 client on the configured endpoint, region and credentials."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=store.s3_endpoint_url,
        region_name=store.s3_region,
        aws_access_key_id=store.s3_access_key_id,
        aws_secret_access_key=store.s3_secret_access_key,
        config=Config(retries={"max_attempts": max_attempts, "mode": "standard"},
                      connect_timeout=connect_timeout, read_timeout=read_timeout),
    )


class S3Store:
    def __init__(self, store: StoreSettings, bucket: str, prefix: str) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.client = s3_client(store)
        if store.s3_create_bucket:
            self._ensure_bucket()

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def _key(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(
            Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type
        )

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def put_file(self, key: str, source: BinaryIO, content_type: str) -> None:
        # Multipart upload in parts; the whole file is never in memory.
        self.client.upload_fileobj(source, self.bucket, self._key(key),
                                   ExtraArgs={"ContentType": content_type})

    def open(self, key: str) -> BinaryIO:
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        return cast(BinaryIO, body)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError:
            return False

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:  # any botocore failure means "not reachable"
            raise Unavailable(f"bucket {self.bucket} is not reachable: {exc}") from exc


def make_store(store: StoreSettings) -> ObjectStore:
    """`s3://bucket/prefix` or `file:///path` (relative: `file://./path`)."""
    url = store.store_url
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        prefix = parsed.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return S3Store(store, parsed.netloc, prefix)
    if parsed.scheme == "file":
        return LocalStore(Path(parsed.netloc + parsed.path))
    raise ValueError(f"VLMQ_STORE_URL must start with s3:// or file://, got {url!r}")
