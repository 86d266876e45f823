"""The OpenAI-compatible Files, Batches and chat-completions API, through the official
`openai` client in strict validation mode, against a real API process, echo worker and
control process (which does the batch work)."""

from __future__ import annotations

import base64
import http.server
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from standardwebhooks.webhooks import Webhook

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
from tests.helpers.services import create_api_key
from tests.helpers.stack import Stack
from tests.helpers.store import s3_client, store_location
from tests.helpers.webhook_receiver import receiver

SECRET = "whsec_" + base64.b64encode(b"batch-webhook-secret-32-bytes!!!").decode()
RECEIVER_HOST = "127.0.0.3"


@dataclass
class Bulk(EchoStack):
    client: OpenAI


@pytest.fixture(scope="module")
def bulk(stack: Stack) -> Iterator[Bulk]:
    with echo_stack(
        stack, "batches", chat_wait_seconds="2",
        image_fetch_allow_http="true", image_fetch_allowed_networks='["127.0.0.1/32"]',
        webhook_secrets=json.dumps([SECRET]), webhook_allow_http="true",
        webhook_allowed_networks=f'["{RECEIVER_HOST}/32"]', webhook_poll_seconds="0.2",
    ) as echo, openai_client(echo.base, echo.stack.api_key) as client:
        yield Bulk(**vars(echo), client=client)


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    image = png_bytes(96, 72, seed=3)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(image)))
            self.end_headers()
            self.wfile.write(image)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/cat.png"
    server.shutdown()


def read_lines(client: OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    if file_id is None:
        return {}
    text = client.files.content(file_id).text
    lines = [json.loads(raw) for raw in text.splitlines() if raw]
    by_id = {x["custom_id"]: x for x in lines}
    assert len(by_id) == len(lines), "a custom_id appears twice"
    return by_id


def test_a_batch_runs_to_completion_with_every_kind_of_image(bulk: Bulk,
                                                            image_server: str) -> None:
    bucket, _ = store_location(bulk.stack.settings.store_url)
    s3 = s3_client(bulk.stack.settings)
    # Outside the store's prefix: objects under it are vlmq's own and cannot be named.
    s3.put_object(Bucket=bucket, Key="refs/dog.png", Body=png_bytes(80, 60, seed=5))
    # A tenant names only the s3:// prefixes an operator allowed it.
    subprocess.run([sys.executable, "-m", "shared.cli", "keys", "limits", "--tenant", "tests",
                    "--image-url-prefix", f"s3://{bucket}/refs"], env=bulk.stack.env,
                   check=True, capture_output=True, timeout=60)
    good = {
        "data-0": data_url(png_bytes(64, 48, seed=0)),
        "data-1": data_url(png_bytes(64, 48, seed=1)),
        "s3": f"s3://{bucket}/refs/dog.png",
        "https": image_server,
    }
    lines = [line(cid, bulk.model, url) for cid, url in good.items()]
    lines.append(line("not-an-image", bulk.model, data_url(b"this is not a png")))
    lines.append(line("missing-object", bulk.model, f"s3://{bucket}/refs/none.png"))
    lines.append({**line("two-choices", bulk.model, good["data-0"]),
                  "body": {**line("x", bulk.model, good["data-0"])["body"], "n": 2}})

    file_id = upload(bulk.client, lines)
    created = bulk.client.batches.create(input_file_id=file_id, endpoint=ENDPOINT,
                                         completion_window="24h", metadata={"run": "t1"})
    assert created.status == "validating" and created.metadata == {"run": "t1"}
    done = wait_batch(bulk.client, created.id, {"completed", "failed"})
    assert done.status == "completed", done
    outputs = read_lines(bulk.client, done.output_file_id)
    errors = read_lines(bulk.client, done.error_file_id)
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (7, 4, 3), errors
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert set(outputs) == set(good)
    assert set(errors) == {"not-an-image", "missing-object", "two-choices"}
    for out in outputs.values():
        assert out["error"] is None and out["response"]["status_code"] == 200
        completion = openai.types.chat.ChatCompletion.model_validate(out["response"]["body"])
        assert completion.choices[0].message.content
        assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert errors["not-an-image"]["response"]["body"]["error"]["code"] == "invalid_image"
    assert errors["not-an-image"]["response"]["status_code"] == 400
    assert errors["two-choices"]["response"]["body"]["error"]["code"] == "unsupported_field"
    assert errors["missing-object"]["response"]["body"]["error"]["code"].startswith("image_")

    file_ids = {f.id for f in bulk.client.files.list()}
    assert {file_id, done.output_file_id, done.error_file_id} <= file_ids
    with pytest.raises(openai.ConflictError):
        bulk.client.batches.cancel(done.id)


def test_a_finished_batch_sends_a_signed_webhook(bulk: Bulk) -> None:
    lines = [line(f"hooked-{i}", bulk.model, data_url(png_bytes(16, 16))) for i in range(2)]
    with receiver(host=RECEIVER_HOST) as hook:
        batch = bulk.client.batches.create(
            input_file_id=upload(bulk.client, lines), endpoint=ENDPOINT,
            completion_window="24h", extra_body={"webhook_url": hook.url()},
        )
        done = wait_batch(bulk.client, batch.id, {"completed"})
        [hit] = hook.wait_for(1)
    event = Webhook(SECRET).verify(hit.body, hit.headers)
    assert event["type"] == "batch.completed"
    sent = openai.types.Batch.model_validate(
        {k: v for k, v in event["data"].items() if k not in ("url", "truncated")})
    assert sent.id == batch.id and sent.output_file_id == done.output_file_id
    assert sent.request_counts is not None and sent.request_counts.completed == 2
    with httpx.Client(base_url=bulk.base, headers=bulk.stack.headers, timeout=30) as http:
        deadline = time.monotonic() + 30
        while True:  # the ledger records the answer just after the receiver has it
            ledger = http.get("/v1/deliveries", params={"limit": 50}).json()["data"]
            [delivery] = [d for d in ledger if d["batch_id"] == batch.id]
            if delivery["status"] == "succeeded" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert delivery["event"] == "batch.completed" and delivery["status"] == "succeeded"
        assert delivery["job_id"] is None


def test_validation_failures_name_their_lines(bulk: Bulk) -> None:
    ok = json.dumps(line("a", bulk.model, data_url(png_bytes(8, 8))))
    content = "\n".join([
        ok,
        "{not json",
        ok,  # custom_id "a" again
        json.dumps({**line("b", bulk.model, "https://example.com/x.png"),
                    "url": "/v1/embeddings"}),
        json.dumps(line("c", "another-model", "https://example.com/x.png")),
    ]).encode()
    batch = bulk.client.batches.create(input_file_id=upload(bulk.client, content),
                                       endpoint=ENDPOINT, completion_window="24h")
    failed = wait_batch(bulk.client, batch.id, {"failed", "in_progress", "completed"})
    assert failed.status == "failed" and failed.failed_at
    assert failed.errors is not None and failed.errors.data is not None
    found = {(e.code, e.line) for e in failed.errors.data}
    assert found == {("invalid_json_line", 2), ("duplicate_custom_id", 3),
                     ("invalid_url", 4), ("mixed_models", 5)}
    assert failed.output_file_id is None and failed.error_file_id is None

    empty = bulk.client.batches.create(input_file_id=upload(bulk.client, b"\n"),
                                       endpoint=ENDPOINT, completion_window="24h")
    empty = wait_batch(bulk.client, empty.id, {"failed"})
    assert empty.errors is not None and empty.errors.data is not None
    assert empty.errors.data[0].code == "empty_file"


def test_cancelling_keeps_finished_lines(bulk: Bulk) -> None:
    image = data_url(png_bytes(32, 24))
    quick = [line(f"quick-{i}", bulk.model, image) for i in range(4)]
    stuck = [line(f"stuck-{i}", bulk.model, image, prompt="[echo:hang] forever")
             for i in range(3)]
    batch = bulk.client.batches.create(input_file_id=upload(bulk.client, quick + stuck),
                                       endpoint=ENDPOINT, completion_window="24h")
    deadline = time.monotonic() + 60
    while True:
        counts = bulk.client.batches.retrieve(batch.id).request_counts
        if counts is not None and counts.completed == len(quick):
            break
        assert time.monotonic() < deadline
        time.sleep(0.3)
    cancelling = bulk.client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    cancelled = wait_batch(bulk.client, batch.id, {"cancelled"})
    assert cancelled.cancelling_at and cancelled.cancelled_at
    outputs = read_lines(bulk.client, cancelled.output_file_id)
    errors = read_lines(bulk.client, cancelled.error_file_id)
    assert set(outputs) == {x["custom_id"] for x in quick}
    assert set(errors) == {x["custom_id"] for x in stuck}
    assert {e["error"]["code"] for e in errors.values()} == {"batch_cancelled"}


def test_a_batch_past_its_window_expires(bulk: Bulk) -> None:
    lines = [line(f"late-{i}", bulk.parked, data_url(png_bytes(16, 16))) for i in range(3)]
    batch = bulk.client.batches.create(input_file_id=upload(bulk.client, lines),
                                       endpoint=ENDPOINT, completion_window="2s")
    expired = wait_batch(bulk.client, batch.id, {"expired"}, timeout=60)
    assert expired.expired_at and expired.output_file_id is None
    errors = read_lines(bulk.client, expired.error_file_id)
    assert set(errors) == {x["custom_id"] for x in lines}
    assert {e["error"]["code"] for e in errors.values()} == {"batch_expired"}


def test_batches_list_with_pagination(bulk: Bulk) -> None:
    ids = []
    for _ in range(3):
        file_id = upload(bulk.client, [line("p", bulk.parked, data_url(png_bytes(8, 8)))])
        ids.append(bulk.client.batches.create(input_file_id=file_id, endpoint=ENDPOINT,
                                              completion_window="24h").id)
    first = bulk.client.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    second = bulk.client.batches.list(limit=2, after=first.data[-1].id)
    assert second.data[0].id == ids[0]
    every = [b.id for b in bulk.client.batches.list(limit=2)]  # auto-paginates
    assert set(ids) <= set(every)
    for batch_id in ids:
        bulk.client.batches.cancel(batch_id)


def test_chat_completions_with_an_image(bulk: Bulk) -> None:
    completion = bulk.client.chat.completions.create(
        model=bulk.model, max_tokens=6,
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is in the picture?"},
            {"type": "image_url", "image_url": {"url": data_url(png_bytes(48, 36))}},
        ]}],
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens <= 6
    with pytest.raises(openai.BadRequestError) as refused:
        bulk.client.chat.completions.create(
            model=bulk.model, messages=[{"role": "user", "content": "no image at all"}])
    assert "image_url" in str(refused.value)


def test_a_chat_completion_past_its_wait_names_its_job_and_is_not_retried(bulk: Bulk) -> None:
    patient = openai_client(bulk.base, bulk.stack.api_key, max_retries=2)
    prompt = f"parked {uuid.uuid4().hex}"
    with patient, pytest.raises(openai.APIStatusError) as late:
        patient.chat.completions.create(
            model=bulk.parked,  # no worker serves it
            messages=[{"role": "user", "content": [
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {"url": data_url(png_bytes(8, 8))}}]}])
    assert late.value.status_code == 504
    assert "GET /v1/jobs/" in late.value.message
    job_path = late.value.response.headers["location"]
    with httpx.Client(base_url=bulk.base, headers=bulk.stack.headers, timeout=30) as http:
        listed = http.get("/v1/jobs", params={"model": bulk.parked, "limit": 500}).json()
        assert [j["id"] for j in listed["data"] if j["prompt"] == prompt] == [
            job_path.rsplit("/", 1)[1]], "the client's retries made more jobs"
        http.post(f"{job_path}/cancel")


def test_another_tenants_files_and_batches_are_not_found(bulk: Bulk) -> None:
    file_id = upload(bulk.client, [line("mine", bulk.parked, data_url(png_bytes(8, 8)))])
    batch = bulk.client.batches.create(input_file_id=file_id, endpoint=ENDPOINT,
                                       completion_window="24h")
    other = OpenAI(base_url=f"{bulk.base}/v1", max_retries=0,
                   api_key=create_api_key(bulk.stack.settings.database_url, "someone-else"))
    with other:
        for call in (lambda: other.files.retrieve(file_id),
                     lambda: other.files.content(file_id),
                     lambda: other.files.delete(file_id),
                     lambda: other.batches.retrieve(batch.id),
                     lambda: other.batches.cancel(batch.id),
                     lambda: other.batches.create(input_file_id=file_id, endpoint=ENDPOINT,
                                                  completion_window="24h")):
            with pytest.raises(openai.NotFoundError):
                call()
        assert file_id not in {f.id for f in other.files.list()}
        assert batch.id not in {b.id for b in other.batches.list()}
    bulk.client.batches.cancel(batch.id)

