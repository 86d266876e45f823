"""OpenAI's expiry fields (`expires_after` on a file, `output_expires_after` on a batch)
through the official `openai` client in strict mode, the defaults retention gives files
without them, and the 410 `expired_data` answer for files and batches retention purged,
against a real API, echo worker and control process."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from sqlalchemy import func, select, update

from shared.models import Batch, StoredFile, Tenant
from shared.timeutil import utcnow
from tests.helpers.echo_stack import (
    ENDPOINT,
    EchoStack,
    echo_stack,
    openai_client,
    upload,
    wait_batch,
)
from tests.helpers.echo_stack import batch_line as line
from tests.helpers.images import data_url, png_bytes
from tests.helpers.services import bearer, create_api_key
from tests.helpers.stack import Stack, db_sessions
from tests.helpers.store import count_objects, s3_client, store_location

# The server's retention here: neither OpenAI's 30 days nor one of the bounds, so a default
# expiry is told apart from an explicit one.
RETENTION = 2 * 86400
CONTENT = b'{"custom_id": "x"}\n'


@dataclass
class Expiry(EchoStack):
    client: OpenAI
    other: OpenAI  # another tenant's
    keeper: OpenAI  # a tenant whose retention is 0: kept for ever
    other_key: str


@pytest.fixture(scope="module")
def expiry(stack: Stack) -> Iterator[Expiry]:
    bucket, _ = store_location(stack.settings.store_url)
    # A prefix of its own, so that counting objects sees this module's alone.
    with echo_stack(stack, "expiry", retention_seconds=str(RETENTION),
                    store_url=f"s3://{bucket}/expiry-{uuid.uuid4().hex[:6]}") as echo:
        db_url = echo.stack.settings.database_url
        other_key = create_api_key(db_url, "expiry-other")
        keeper_key = create_api_key(db_url, "expiry-keeper")
        with db_sessions(echo.stack.settings).begin() as session:
            session.execute(update(Tenant).where(Tenant.id == "expiry-keeper")
                            .values(retention_seconds=0))
        with openai_client(echo.base, echo.stack.api_key) as client, \
                openai_client(echo.base, other_key) as other, \
                openai_client(echo.base, keeper_key) as keeper:
            yield Expiry(**vars(echo), client=client, other=other, keeper=keeper,
                         other_key=other_key)


def lines(expiry: Expiry, n_good: int = 2) -> list[dict[str, Any]]:
    """`n_good` lines that succeed and one that fails, so a batch writes both files."""
    image = data_url(png_bytes(16, 16))
    good = [line(f"ok-{i}", expiry.model, image) for i in range(n_good)]
    return [*good, line("bad", expiry.model, data_url(b"not an image"))]


def test_the_openai_client_sets_file_and_batch_output_expiry(expiry: Expiry) -> None:
    client = expiry.client
    file = client.files.create(file=("in.jsonl", _jsonl(lines(expiry))), purpose="batch",
                               expires_after={"anchor": "created_at", "seconds": 3600})
    assert file.expires_at == file.created_at + 3600
    assert client.files.retrieve(file.id).expires_at == file.expires_at
    assert {f.id: f.expires_at for f in client.files.list()}[file.id] == file.expires_at

    batch = client.batches.create(
        input_file_id=file.id, endpoint=ENDPOINT, completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 7200},
    )
    # The batch's own expires_at stays its completion window's end.
    assert batch.expires_at == batch.created_at + 86400
    done = wait_batch(client, batch.id, {"completed"})
    assert done.output_file_id and done.error_file_id
    for file_id in (done.output_file_id, done.error_file_id):
        written = client.files.retrieve(file_id)
        # Counted from the file's creation, not the batch's (as at OpenAI).
        assert written.expires_at == written.created_at + 7200
        assert written.created_at >= done.created_at
    with db_sessions(expiry.stack.settings)() as session:
        stored = session.scalar(select(Batch.output_expires_after_seconds)
                                .where(Batch.id == batch.id))
    assert stored == 7200


def test_without_expiry_files_follow_their_tenants_retention(expiry: Expiry) -> None:
    file = expiry.client.files.create(file=("in.jsonl", _jsonl(lines(expiry, 1))),
                                      purpose="batch")
    assert file.expires_at == file.created_at + RETENTION
    done = wait_batch(expiry.client, expiry.client.batches.create(
        input_file_id=file.id, endpoint=ENDPOINT, completion_window="24h").id, {"completed"})
    output = expiry.client.files.retrieve(done.output_file_id or "")
    assert output.expires_at == output.created_at + RETENTION

    # A tenant whose retention is 0 keeps its files until it deletes them, the output of
    # its batches too (the control process reads its retention from its row).
    keeper = expiry.keeper
    kept = keeper.files.create(file=("in.jsonl", _jsonl(lines(expiry, 1))), purpose="batch")
    assert kept.expires_at is None
    done = wait_batch(keeper, keeper.batches.create(
        input_file_id=kept.id, endpoint=ENDPOINT, completion_window="24h").id, {"completed"})
    assert keeper.files.retrieve(done.output_file_id or "").expires_at is None
    # Its own expires_after still wins.
    short = keeper.files.create(file=("in.jsonl", CONTENT), purpose="batch",
                                expires_after={"anchor": "created_at", "seconds": 86400})
    assert short.expires_at == short.created_at + 86400


@pytest.mark.parametrize("policy", [
    {"anchor": "created_at", "seconds": 3599},
    {"anchor": "created_at", "seconds": 2_592_001},
    {"anchor": "created_at", "seconds": -1},
    {"anchor": "last_active_at", "seconds": 3600},
])
def test_an_expiry_out_of_bounds_is_a_400_and_stores_nothing(expiry: Expiry,
                                                            policy: dict[str, Any]) -> None:
    client = expiry.client
    input_id = upload(client, lines(expiry, 1))
    before = _stored(expiry)
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("in.jsonl", CONTENT), purpose="batch",
                            expires_after=policy)  # type: ignore[arg-type]
    assert refused.value.code == "invalid_expires_after"
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(input_file_id=input_id, endpoint=ENDPOINT,
                              completion_window="24h",
                              output_expires_after=policy)  # type: ignore[arg-type]
    assert refused.value.code == "invalid_expires_after"
    assert _stored(expiry) == before


def test_other_spellings_of_expires_after_are_refused(expiry: Expiry) -> None:
    before = _stored(expiry)
    with httpx.Client(base_url=expiry.base, headers=expiry.stack.headers, timeout=30) as http:
        for fields in ({"expires_after[anchor]": "created_at"},
                       {"expires_after[seconds]": "3600"},
                       {"expires_after": '{"anchor": "created_at", "seconds": 3600}'},
                       {"expires_after[anchor]": "created_at", "expires_after[seconds]": "1h"},
                       {"expires_after[anchor]": "created_at",
                        "expires_after[seconds]": "3600.0"}):
            r = http.post("/v1/files", data={"purpose": "batch", **fields},
                          files={"file": ("in.jsonl", CONTENT, "application/jsonl")})
            assert r.status_code == 400, (fields, r.text)
            assert r.json()["error"]["code"] == "invalid_expires_after"
        assert _stored(expiry) == before
        input_id = upload(expiry.client, lines(expiry, 1))
        before = _stored(expiry)
        # Shapes the body's model refuses: a missing or mistyped field, an extra one.
        for policy in ({"anchor": "created_at"}, {"anchor": "created_at", "seconds": "3600"},
                       {"anchor": "created_at", "seconds": 3600, "extra": 1}, "3600"):
            r = http.post("/v1/batches", json={"input_file_id": input_id, "endpoint": ENDPOINT,
                                               "output_expires_after": policy})
            assert r.status_code == 422, (policy, r.text)
    assert _stored(expiry) == before


def test_purged_files_and_batches_answer_410_to_their_owner_alone(expiry: Expiry) -> None:
    client = expiry.client
    file_id = upload(client, lines(expiry, 1))
    batch = wait_batch(client, client.batches.create(
        input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h").id, {"completed"})
    output_id = batch.output_file_id or ""
    with db_sessions(expiry.stack.settings).begin() as session:
        now = utcnow()
        session.execute(update(StoredFile).where(StoredFile.id.in_([file_id, output_id]))
                        .values(purged_at=now))
        session.execute(update(Batch).where(Batch.id == batch.id).values(purged_at=now))

    with httpx.Client(base_url=expiry.base, headers=expiry.stack.headers, timeout=30) as mine, \
            httpx.Client(base_url=expiry.base, headers=bearer(expiry.other_key),
                         timeout=30) as theirs:
        reads = [("GET", f"/v1/files/{file_id}"), ("GET", f"/v1/files/{output_id}/content"),
                 ("GET", f"/v1/batches/{batch.id}"), ("POST", f"/v1/batches/{batch.id}/cancel")]
        for method, path in reads:
            r = mine.request(method, path)
            assert r.status_code == 410, (path, r.text)
            error = r.json()["error"]
            assert error["code"] == "expired_data" and "removed at" in error["message"]
            # Another tenant cannot tell a purged object from an unknown id.
            assert theirs.request(method, path).status_code == 404, path
        create = {"input_file_id": file_id, "endpoint": ENDPOINT}
        again = mine.post("/v1/batches", json=create)
        assert again.status_code == 410 and file_id in again.json()["error"]["message"]
        assert theirs.post("/v1/batches", json=create).status_code == 404
        assert theirs.delete(f"/v1/files/{file_id}").status_code == 404

        # Lists skip them (through the client, strict).
        assert not {file_id, output_id} & {f.id for f in client.files.list()}
        assert batch.id not in {b.id for b in client.batches.list()}
        # Deleting a purged file removes what is left of it: its row.
        assert client.files.delete(output_id).deleted
        assert mine.get(f"/v1/files/{output_id}").status_code == 404
    with db_sessions(expiry.stack.settings)() as session:
        assert session.get(StoredFile, output_id) is None


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


def _stored(expiry: Expiry) -> tuple[int, int, int]:
    """Files and batches rows, and objects in the store: what a refused request leaves."""
    with db_sessions(expiry.stack.settings)() as session:
        files = session.scalar(select(func.count()).select_from(StoredFile)) or 0
        batches = session.scalar(select(func.count()).select_from(Batch)) or 0
    objects = count_objects(s3_client(expiry.stack.settings), expiry.stack.settings.store_url)
    return files, batches, objects
