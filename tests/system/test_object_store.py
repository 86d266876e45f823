"""The object store interface on both backends, against a real S3 server (moto over HTTP)
and a folder: what one writes the other side reads back the same, and boto3, the client
an operator uses on the bucket, sees the objects the service wrote."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.outages import unreachable
from shared.settings import StoreSettings
from shared.storage import ObjectStore, StoreUnreachable, make_store
from tests.helpers.services import free_port, moto_server
from tests.helpers.store import s3_client, store_location

# Above obstore's 5 MiB part size, so a file goes up as a multipart upload.
BIG = 12 * 1024 * 1024 + 7


def s3_settings(endpoint: str) -> StoreSettings:
    return StoreSettings(store_url=f"s3://vlmq-store-{uuid.uuid4().hex[:8]}/objects",
                         s3_endpoint_url=endpoint, s3_access_key_id="test",
                         s3_secret_access_key="test")


@pytest.fixture(params=["s3", "folder"])
def store(request: pytest.FixtureRequest, s3_endpoint: str, tmp_path: Path) -> ObjectStore:
    if request.param == "s3":
        return make_store(s3_settings(s3_endpoint))
    return make_store(StoreSettings(store_url=f"file://{tmp_path}/objects"))


def test_an_object_reads_back_as_written(store: ObjectStore) -> None:
    store.put("images/a", b"\x89PNG pixels", "image/png")
    assert store.get("images/a") == b"\x89PNG pixels"
    assert store.exists("images/a")
    assert not store.exists("images/b")


def test_a_missing_object_is_file_not_found_with_a_short_message(store: ObjectStore) -> None:
    with pytest.raises(FileNotFoundError) as missing:
        store.get("images/never-written")
    assert "images/never-written" in str(missing.value) and "\n" not in str(missing.value)
    with pytest.raises(FileNotFoundError):
        store.open("images/never-written")


def test_a_big_file_streams_up_and_down(store: ObjectStore) -> None:
    lines = [f'{{"custom_id": "{i}", "pad": "{"x" * 100}"}}\n'.encode() for i in range(BIG // 120)]
    body = b"".join(lines)
    store.put_file("files/big", io.BytesIO(body), "application/jsonl")
    with store.open("files/big") as fh:
        read = list(fh)  # line by line, as the batch runner reads its input
    assert read == lines
    with store.open("files/big") as fh:
        assert fh.read(10) == body[:10]
        assert fh.read() == body[10:]


def test_delete_removes_and_is_idempotent(store: ObjectStore) -> None:
    store.put("images/gone", b"x", "image/png")
    store.delete("images/gone")
    assert not store.exists("images/gone")
    store.delete("images/gone")


def test_boto3_sees_what_the_service_wrote(s3_endpoint: str) -> None:
    settings = s3_settings(s3_endpoint)
    store = make_store(settings)
    data = os.urandom(150_000)
    store.put("images/photo", data, "image/jpeg")
    bucket, prefix = store_location(settings.store_url)
    s3 = s3_client(settings)  # type: ignore[arg-type]
    obj = s3.get_object(Bucket=bucket, Key=f"{prefix}/images/photo")
    assert obj["ContentType"] == "image/jpeg"
    assert obj["Body"].read() == data
    s3.put_object(Bucket=bucket, Key=f"{prefix}/images/from-boto", Body=b"theirs")
    assert store.get("images/from-boto") == b"theirs"


def test_a_stopped_server_is_an_object_store_outage(tmp_path: Path) -> None:
    with moto_server(tmp_path) as endpoint:
        store = make_store(s3_settings(endpoint))
        store.put("images/a", b"x", "image/png")
    # The server is gone: each call fails within its few retries and says what is down.
    for call in (lambda: store.put("images/b", b"x", "image/png"),
                 lambda: store.get("images/a")):
        with pytest.raises(StoreUnreachable) as down:
            call()
        assert unreachable(down.value) == "object store"
        assert "\n" not in str(down.value)


@pytest.fixture
def unused_endpoint() -> Iterator[str]:
    yield f"http://127.0.0.1:{free_port()}"


def test_a_server_that_never_answered_is_an_outage_not_a_bug(unused_endpoint: str) -> None:
    settings = s3_settings(unused_endpoint).model_copy(update={"s3_create_bucket": False})
    store = make_store(settings)
    with pytest.raises(StoreUnreachable):
        store.get("images/a")
