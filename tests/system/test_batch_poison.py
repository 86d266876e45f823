"""Batches of many tenants side by side: a poisoned batch fails alone, with its lines
named, while another tenant's batch created after it completes; a batch whose work keeps
failing backs off, then fails with what ran; files in use stay; lines keep to the batch
class; and list cursors say nothing of other tenants' objects."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from sqlalchemy import select

from shared.models import Batch
from tests.helpers.echo_stack import (
    ENDPOINT,
    EchoStack,
    batch_line,
    echo_stack,
    openai_client,
    upload,
    wait_batch,
)
from tests.helpers.images import data_url, png_bytes
from tests.helpers.services import create_api_key
from tests.helpers.stack import Stack, db_sessions
from tests.helpers.store import s3_client, store_location

TRIES = 3


@dataclass
class Tenants(EchoStack):
    a: OpenAI  # the stack's own tenant
    b: OpenAI
    b_key: str


@pytest.fixture(scope="module")
def tenants(stack: Stack) -> Iterator[Tenants]:
    with echo_stack(stack, "batch-poison", batch_work_tries=str(TRIES),
                    batch_retry_seconds="0.2") as echo:
        b_key = create_api_key(echo.stack.settings.database_url, "tenant-b")
        with (openai_client(echo.base, echo.stack.api_key) as a,
              openai_client(echo.base, b_key) as b):
            yield Tenants(**vars(echo), a=a, b=b, b_key=b_key)


def line(custom_id: Any, model: Any, prompt: str = "Describe it.", **body: Any) -> str:
    """A line as text, so that tests can make it into what `json.dumps` never writes."""
    return json.dumps(batch_line(custom_id, model, data_url(png_bytes(16, 12)), prompt,
                                 max_tokens=4, **body))


def create(client: OpenAI, lines: list[str]) -> str:
    return client.batches.create(input_file_id=upload(client, lines), endpoint=ENDPOINT,
                                 completion_window="24h").id


def good_batch(t: Tenants, n: int = 3) -> str:
    return create(t.a, [line(f"good-{i}", t.model) for i in range(n)])


def remove_stored_input(t: Tenants, file_id: str) -> None:
    """Deletes the file's object from the bucket behind vlmq's back."""
    bucket, _ = store_location(t.stack.settings.store_url)
    s3 = s3_client(t.stack.settings)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])
            if o["Key"].endswith(f"files/{file_id}")]
    assert len(keys) == 1, keys
    s3.delete_object(Bucket=bucket, Key=keys[0])


def test_a_poisoned_batch_fails_alone_and_names_its_lines(tenants: Tenants) -> None:
    t = tenants
    poisoned = [
        "[" * 200_000,  # the parser's recursion, not its syntax check, gives up first
        "[" * 50_000 + "]" * 50_000,
        line("nul\u0000id", t.model),
        line("x" * 513, t.model),
        line(12345, t.model),
        line("fine", t.model),
        line("nul-model", "echo\u0000"),
        line("long-model", "m" * 201),
        line("number-model", 7),
        # A lone surrogate is refused by the parser, as in every JSON body the API reads.
        line("surrogate\ud800", t.model),
    ]
    b_batch = create(t.b, poisoned)
    a_batch = good_batch(t)
    done = wait_batch(t.a, a_batch, {"completed", "failed"})
    assert done.status == "completed", done
    failed = wait_batch(t.b, b_batch, {"failed", "in_progress", "completed"})
    assert failed.status == "failed", failed
    assert failed.errors is not None and failed.errors.data is not None
    assert {(e.code, e.line) for e in failed.errors.data} == {
        ("invalid_json_line", 1), ("invalid_json_line", 2), ("invalid_custom_id", 3),
        ("invalid_custom_id", 4), ("invalid_custom_id", 5), ("invalid_model", 7),
        ("invalid_model", 8), ("invalid_model", 9), ("invalid_json_line", 10)}


def test_errors_quote_only_a_prefix_of_what_was_sent(tenants: Tenants) -> None:
    t = tenants
    huge = "z" * 512
    lines = [line(huge, t.model), line(huge, t.model), line("other-model", "q" * 200)]
    lines.append(json.dumps({**json.loads(line("bad-url", t.model)), "url": "u" * 1_000_000}))
    lines += [json.dumps({**json.loads(line(f"u{i}", t.model)), "url": "w" * 2_000})
              for i in range(150)]
    batch = wait_batch(t.a, create(t.a, lines), {"failed"})
    assert batch.errors is not None and batch.errors.data is not None
    codes = [e.code for e in batch.errors.data]
    assert codes[:4] == ["duplicate_custom_id", "mixed_models", "invalid_url", "invalid_url"]
    assert len(codes) == 100
    assert all(len(e.message or "") < 250 for e in batch.errors.data)
    assert len(batch.model_dump_json()) < 40_000


def test_a_batch_whose_work_keeps_failing_backs_off_then_fails_alone(tenants: Tenants) -> None:
    t = tenants
    file_id = upload(t.b, [line(f"lost-{i}", t.model) for i in range(2)])
    remove_stored_input(t, file_id)
    b_batch = t.b.batches.create(input_file_id=file_id, endpoint=ENDPOINT,
                                 completion_window="24h").id
    a_batch = good_batch(t)
    assert wait_batch(t.a, a_batch, {"completed", "failed"}).status == "completed"
    failed = wait_batch(t.b, b_batch, {"failed"})
    assert failed.errors is not None and failed.errors.data is not None
    [error] = failed.errors.data
    assert error.code == "batch_processing_error" and error.line is None
    assert "Traceback" not in (error.message or "") and "NoSuchKey" not in (error.message or "")
    with db_sessions(t.stack.settings)() as session:
        assert session.scalar(select(Batch.work_failures)
                              .where(Batch.id == b_batch)) == TRIES
    log = t.control.log_text()
    assert log.count(f"batch {b_batch}: its work failed (try 1") == 1
    assert log.count(f"batch {b_batch}: its work failed again") == TRIES - 1


def test_a_running_batch_that_fails_keeps_what_ran(tenants: Tenants) -> None:
    t = tenants
    quick = [line(f"quick-{i}", t.model) for i in range(2)]
    stuck = [line("stuck", t.model, prompt="[echo:hang] forever")]
    file_id = upload(t.b, quick + stuck)
    batch_id = t.b.batches.create(input_file_id=file_id, endpoint=ENDPOINT,
                                  completion_window="24h").id
    deadline = time.monotonic() + 60
    while (counts := t.b.batches.retrieve(batch_id).request_counts) is None or \
            counts.completed < len(quick):
        assert time.monotonic() < deadline, counts
        time.sleep(0.2)
    remove_stored_input(t, file_id)  # finishing the batch now cannot read its input
    t.b.batches.cancel(batch_id)
    failed = wait_batch(t.b, batch_id, {"failed", "cancelled"})
    assert failed.status == "failed" and failed.failed_at
    assert failed.errors is not None and failed.errors.data is not None
    assert [e.code for e in failed.errors.data] == ["batch_processing_error"]
    outputs = t.b.files.content(failed.output_file_id or "").text.splitlines()
    errors = t.b.files.content(failed.error_file_id or "").text.splitlines()
    assert sorted(json.loads(x)["custom_id"] for x in outputs) == ["quick-0", "quick-1"]
    [stopped] = [json.loads(x) for x in errors]
    assert stopped["custom_id"] == "stuck" and stopped["error"]["code"] == "batch_cancelled"


def test_a_file_in_use_cannot_be_deleted(tenants: Tenants) -> None:
    t = tenants
    file_id = upload(t.a, [line("waits", t.parked)])
    batch_id = t.a.batches.create(input_file_id=file_id, endpoint=ENDPOINT,
                                  completion_window="24h").id
    with pytest.raises(openai.ConflictError) as refused:
        t.a.files.delete(file_id)
    assert refused.value.code == "file_in_use"
    assert t.a.files.content(file_id).text  # the file and its bytes are still there
    t.a.batches.cancel(batch_id)
    wait_batch(t.a, batch_id, {"cancelled"})
    assert t.a.files.delete(file_id).deleted


def test_batch_lines_never_run_ahead_of_the_batch_class(tenants: Tenants) -> None:
    t = tenants
    batch_priority = t.stack.settings.batch_priority
    asks = {"eager": 0, "plain": None, "late": 9}
    batch_id = create(t.a, [line(cid, t.parked, **({} if p is None else {"priority": p}))
                            for cid, p in asks.items()])
    wait_batch(t.a, batch_id, {"in_progress"})
    with httpx.Client(base_url=t.base, headers=t.stack.headers, timeout=30) as http:
        deadline = time.monotonic() + 30
        while len(jobs := http.get("/v1/jobs", params={"batch_id": batch_id})
                  .json()["data"]) < len(asks):
            assert time.monotonic() < deadline, jobs
            time.sleep(0.2)
    assert sorted(j["priority"] for j in jobs) == sorted([batch_priority, batch_priority, 9])
    t.a.batches.cancel(batch_id)


def test_a_cursor_of_another_tenant_reads_as_an_unknown_one(tenants: Tenants) -> None:
    t = tenants
    a_file = upload(t.a, [line("a", t.parked)])
    a_batch = t.a.batches.create(input_file_id=a_file, endpoint=ENDPOINT,
                                 completion_window="24h").id
    b_files = [upload(t.b, [line(f"b{i}", t.parked)]) for i in range(2)]
    b_batches = [t.b.batches.create(input_file_id=f, endpoint=ENDPOINT,
                                    completion_window="24h").id for f in b_files]
    with httpx.Client(base_url=t.base, headers={"Authorization": f"Bearer {t.b_key}"},
                      timeout=30) as http:
        for path, theirs, unknown in (
            ("/v1/files", a_file, "file-" + "0" * 24),
            ("/v1/batches", a_batch, "batch_" + "0" * 24),
        ):
            seen = http.get(path, params={"after": theirs})
            unseen = http.get(path, params={"after": unknown})
            assert seen.status_code == unseen.status_code == 200
            ids = [x["id"] for x in seen.json()["data"]]
            assert ids == [x["id"] for x in unseen.json()["data"]]
            assert seen.json()["has_more"] == unseen.json()["has_more"]
            assert set(b_files if path == "/v1/files" else b_batches) <= set(ids)
    for batch_id in (a_batch, *b_batches):
        (t.a if batch_id == a_batch else t.b).batches.cancel(batch_id)
