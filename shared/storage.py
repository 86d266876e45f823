"""Object storage for uploaded images and files: S3-compatible (AWS, MinIO) or a folder."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast
from urllib.parse import urlparse

from shared.errors import Unavailable
from shared.settings import StoreSettings

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredObject:
    key: str
    modified_at: datetime


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...
    def get(self, key: str) -> bytes: ...
    # Streamed both ways, so a file of hundreds of MB is never held in memory whole.
    def put_file(self, key: str, source: BinaryIO, content_type: str) -> None: ...
    def open(self, key: str) -> BinaryIO: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    # Many at once (S3's DeleteObjects, up to 1,000 per request); a missing key is no error.
    def delete_many(self, keys: Sequence[str]) -> None: ...
    # Pages of the objects under `prefix`, in no particular order: the orphan pass's walk.
    def list_pages(self, prefix: str, page_size: int) -> Iterator[list[StoredObject]]: ...
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

    def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.delete(key)

    def list_pages(self, prefix: str, page_size: int) -> Iterator[list[StoredObject]]:
        top = self._path(prefix.rstrip("/"))
        page: list[StoredObject] = []
        for folder, _, names in os.walk(top):
            for name in names:
                path = os.path.join(folder, name)
                try:
                    mtime = os.stat(path).st_mtime
                except FileNotFoundError:  # removed meanwhile
                    continue
                key = os.path.relpath(path, self.root).replace(os.sep, "/")
                # put()'s temporary files are no objects: an unfinished write, not an orphan.
                if name.startswith("tmp"):
                    continue
                page.append(StoredObject(key, datetime.fromtimestamp(mtime, timezone.utc)))
                if len(page) >= page_size:
                    yield page
                    page = []
        if page:
            yield page

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise Unavailable(f"object folder {self.root} is not writable")


def s3_client(store: StoreSettings, *, max_attempts: int = 3, connect_timeout: float = 5,
              read_timeout: float = 60) -> Any:
    """A boto3 S3 client on the configured endpoint, region and credentials: for the calls
    off the hot path (bucket checks, s3:// image references), where its cost does not matter."""
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


class StoreUnreachable(Unavailable):
    """The S3 server did not answer, or answered with a server error after retries."""


class S3Store:
    """Objects through obstore (Rust's object_store): a GET or PUT costs well under a
    millisecond of this process's CPU, where boto3 spent 2-3 ms holding the GIL that the
    worker shares with the engine's frontend."""

    def __init__(self, store: StoreSettings, bucket: str, prefix: str) -> None:
        from obstore.store import S3Store as ObstoreS3

        self.settings = store
        self.bucket = bucket
        self.prefix = prefix
        self._admin: Any = None
        config: dict[str, Any] = {"region": store.s3_region}
        if store.s3_endpoint_url:
            config["endpoint"] = store.s3_endpoint_url
        if store.s3_access_key_id:
            config["access_key_id"] = store.s3_access_key_id
        if store.s3_secret_access_key:
            config["secret_access_key"] = store.s3_secret_access_key
        endpoint = store.s3_endpoint_url or ""
        self.objects = ObstoreS3(
            bucket,
            prefix=prefix.rstrip("/") or None,
            config=config,  # type: ignore[arg-type]
            client_options={"allow_http": endpoint.startswith("http://"),
                            "connect_timeout": "5s", "timeout": "60s"},
            # Few, short retries: a submit waits on the put, and an outage must become a
            # 503 within seconds rather than after object_store's default of minutes.
            retry_config={"max_retries": 2, "retry_timeout": timedelta(seconds=10),
                          "backoff": {"init_backoff": timedelta(milliseconds=100),
                                      "max_backoff": timedelta(seconds=2), "base": 2}},
        )
        if store.s3_create_bucket:
            self._ensure_bucket()

    def _admin_client(self) -> Any:
        # Bucket calls have no obstore equivalent; they run once at start and on /readyz.
        if self._admin is None:
            self._admin = s3_client(self.settings)
        return self._admin

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        client = self._admin_client()
        try:
            client.head_bucket(Bucket=self.bucket)
        except ClientError:
            client.create_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        import obstore

        with _translated(key):
            obstore.put(self.objects, key, data, attributes={"Content-Type": content_type},
                        use_multipart=False)

    def get(self, key: str) -> bytes:
        import obstore

        with _translated(key):
            return obstore.get(self.objects, key).bytes().to_bytes()

    def put_file(self, key: str, source: BinaryIO, content_type: str) -> None:
        import obstore

        # Multipart in parts above the chunk size; the whole file is never in memory.
        with _translated(key):
            obstore.put(self.objects, key, source, attributes={"Content-Type": content_type})

    def open(self, key: str) -> BinaryIO:
        import obstore

        with _translated(key):
            reader = obstore.open_reader(self.objects, key)
        return cast(BinaryIO, io.BufferedReader(_BytesReader(reader), _CHUNK))

    def exists(self, key: str) -> bool:
        import obstore

        try:
            with _translated(key):
                obstore.head(self.objects, key)
        except FileNotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        import obstore

        with _translated(key):
            obstore.delete(self.objects, key)

    def delete_many(self, keys: Sequence[str]) -> None:
        import obstore

        if keys:
            with _translated(keys[0]):
                obstore.delete(self.objects, list(keys))

    def list_pages(self, prefix: str, page_size: int) -> Iterator[list[StoredObject]]:
        import obstore

        with _translated(prefix):
            for metas in obstore.list(self.objects, prefix=prefix, chunk_size=page_size):
                yield [StoredObject(meta["path"], meta["last_modified"]) for meta in metas]

    def check(self) -> None:
        try:
            self._admin_client().head_bucket(Bucket=self.bucket)
        except Exception as exc:  # any botocore failure means "not reachable"
            raise Unavailable(f"bucket {self.bucket} is not reachable: {exc}") from exc


@contextmanager
def _translated(key: str) -> Iterator[None]:
    """obstore's errors as the ones callers handle: a missing object is FileNotFoundError
    (as from the folder store), a server that does not answer is StoreUnreachable."""
    from obstore.exceptions import GenericError, NotFoundError

    try:
        yield
    except (FileNotFoundError, NotFoundError):  # obstore raises either, with the whole response
        raise FileNotFoundError(f"no object {key!r} in the store") from None
    except GenericError as exc:
        raise StoreUnreachable(f"the object store failed on {key!r}: "
                               f"{str(exc).splitlines()[0][:300]}") from exc


class _BytesReader(io.RawIOBase):
    """obstore's reader gives its own buffer type; the standard library wants bytes."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with _translated("(stream)"):
            chunk = memoryview(self._reader.read(len(buffer)))
        buffer[:len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        self._reader.close()
        super().close()


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
