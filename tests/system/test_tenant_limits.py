"""Per-tenant limits that keep one team from crowding out the others: the active-jobs quota
under concurrent submits through two API processes, the batch caps and the submission rate
of files and batches, and the s3:// prefixes a tenant may name as images.

Real services throughout: the session's API process (plus a second one here), Postgres,
Redis, moto S3 and an echo worker for a model of this module's own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select

from shared.errors import InvalidInput
from shared.models import Job, StoredFile
from shared.net.image_refs import (
    ImageUrlRefused,
    S3ImageRef,
    canonical_prefix,
    check_tenant_image_url,
)
from shared.settings import Settings
from tests.helpers.images import png_bytes
from tests.helpers.services import (
    Service,
    bearer,
    create_api_key,
    start_api,
    start_worker,
    wait_terminal,
)
from tests.helpers.stack import Stack, db_sessions
from tests.helpers.store import count_objects, s3_client, store_location

PARKED = "parked"  # accepted by the session's API, served by no worker: jobs stay queued


def new_tenant(stack: Stack, *flags: str, keys: int = 1) -> tuple[str, list[str]]:
    tenant = f"tl-{uuid.uuid4().hex[:8]}"
    made = [create_api_key(stack.settings.database_url, tenant) for _ in range(keys)]
    if flags:
        set_limits(stack, tenant, *flags)
    return tenant, made


def set_limits(stack: Stack, tenant: str, *flags: str) -> str:
    run = subprocess.run([sys.executable, "-m", "shared.cli", "keys", "limits", "--tenant",
                          tenant, *flags], env=stack.env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stderr


def jobs_of(stack: Stack, tenant: str) -> int:
    with db_sessions(stack.settings)() as session:
        return session.scalar(select(func.count()).where(Job.tenant_id == tenant)) or 0


def files_of(stack: Stack, tenant: str) -> int:
    with db_sessions(stack.settings)() as session:
        return session.scalar(select(func.count()).where(StoredFile.tenant_id == tenant)) or 0


def stored_objects(stack: Stack) -> int:
    return count_objects(s3_client(stack.settings), stack.settings.store_url)


def upload(base: str, key: str) -> httpx.Response:
    return httpx.post(f"{base}/v1/files", headers=bearer(key), timeout=30,
                      files={"file": ("in.jsonl", batch_lines(1), "application/jsonl")},
                      data={"purpose": "batch"})


def batch_lines(n: int) -> bytes:
    return "\n".join(json.dumps({
        "custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": PARKED, "max_tokens": 4, "messages": [{"role": "user", "content": [
            {"type": "text", "text": f"item {i}"},
            {"type": "image_url", "image_url": {"url": "https://images.example.com/a.png"}},
        ]}]},
    }) for i in range(n)).encode()


def create_batch(base: str, key: str, lines: int) -> httpx.Response:
    with httpx.Client(base_url=base, headers=bearer(key), timeout=30) as client:
        file = client.post("/v1/files", data={"purpose": "batch"},
                           files={"file": ("in.jsonl", batch_lines(lines), "application/jsonl")})
        assert file.status_code == 200, file.text
        return client.post("/v1/batches", json={
            "input_file_id": file.json()["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h"})


def assert_quota_refusal(resp: httpx.Response, limit: int) -> None:
    assert resp.status_code == 429, resp.text
    assert resp.json()["error"]["code"] == "quota_exceeded"
    assert int(resp.headers["retry-after"]) >= 1
    assert resp.headers["ratelimit-limit"] == str(limit)
    assert resp.headers["ratelimit-remaining"] == "0"
    assert int(resp.headers["ratelimit-reset"]) >= 1


# -- the active-jobs quota under concurrency ---------------------------------------------


@pytest.fixture(scope="module")
def second_api(stack: Stack) -> Iterator[str]:
    svc, base = start_api(stack.env, stack.log_dir, name="api-tenant-limits")
    yield base
    svc.stop()


def test_concurrent_submits_through_two_apis_take_exactly_the_quota(
    api: str, second_api: str, stack: Stack
) -> None:
    tenant, keys = new_tenant(stack, "--max-active-jobs=3", keys=3)
    objects_before = stored_objects(stack)
    start = threading.Barrier(40)
    image = png_bytes(32, 24)

    def submit(i: int) -> httpx.Response:
        base = (api, second_api)[i % 2]
        with httpx.Client(base_url=base, headers=bearer(keys[i % 3]), timeout=60) as client:
            start.wait()
            return client.post("/v1/jobs", files={"image": ("a.png", image, "image/png")},
                               data={"prompt": f"job {i}", "model": PARKED, "max_tokens": "4"})

    with ThreadPoolExecutor(40) as pool:
        responses = list(pool.map(submit, range(40)))
    accepted = [r for r in responses if r.status_code == 202]
    assert len(accepted) == 3, [r.status_code for r in responses]
    for resp in responses:
        if resp.status_code != 202:
            assert_quota_refusal(resp, 3)
    assert jobs_of(stack, tenant) == 3
    assert stored_objects(stack) - objects_before == 3  # a refused upload leaves no object


# -- batches: caps and the submission rate -----------------------------------------------


def test_active_batches_are_capped(api: str, stack: Stack, control: Service) -> None:
    tenant, (key,) = new_tenant(stack, "--max-active-batches=1")
    first = create_batch(api, key, 1)
    assert first.status_code == 200, first.text
    second = create_batch(api, key, 1)
    assert_quota_refusal(second, 1)
    assert "1 batches in progress" in second.json()["error"]["message"]
    assert httpx.post(f"{api}/v1/batches/{first.json()['id']}/cancel", headers=bearer(key),
                      timeout=30).status_code == 200
    deadline = time.monotonic() + 60
    while (retry := create_batch(api, key, 1)).status_code == 429:
        assert time.monotonic() < deadline, retry.text
        time.sleep(0.5)
    assert retry.status_code == 200, retry.text


def test_queued_batch_lines_are_capped_once_validated(api: str, stack: Stack,
                                                     control: Service) -> None:
    tenant, (key,) = new_tenant(stack, "--max-queued-batch-lines=3")
    first = create_batch(api, key, 3)
    assert first.status_code == 200, first.text
    # Its lines count from validation on; until then its line count is unknown.
    deadline = time.monotonic() + 60
    while (later := create_batch(api, key, 1)).status_code == 200:
        assert time.monotonic() < deadline, "the first batch's lines never counted"
        time.sleep(0.3)
    assert_quota_refusal(later, 3)
    assert "batch lines queued or running" in later.json()["error"]["message"]
    batch = httpx.get(f"{api}/v1/batches/{first.json()['id']}", headers=bearer(key),
                      timeout=30).json()
    assert batch["status"] == "in_progress"
    # Interactive jobs have their own quota: batch lines do not hold them back.
    job = httpx.post(f"{api}/v1/jobs", headers=bearer(key), timeout=30,
                     files={"image": ("a.png", png_bytes(16, 12), "image/png")},
                     data={"prompt": "p", "model": PARKED})
    assert job.status_code == 202, job.text


def test_files_and_batches_count_against_the_submission_rate(api: str, stack: Stack) -> None:
    tenant, (key,) = new_tenant(stack, "--submits-per-second=1")
    responses = [upload(api, key) for _ in range(3)]
    refused = [r for r in responses if r.status_code == 429]
    assert refused, [r.status_code for r in responses]
    for resp in refused:
        assert resp.json()["error"]["code"] == "rate_limited"
        assert resp.headers["ratelimit-limit"] == "1"
    # Refused before the body was read: no file row for it.
    assert files_of(stack, tenant) == len(responses) - len(refused)
    file_id = next(r.json()["id"] for r in responses if r.status_code == 200)
    creates = [httpx.post(f"{api}/v1/batches", headers=bearer(key), timeout=30, json={
        "input_file_id": file_id, "endpoint": "/v1/chat/completions",
        "completion_window": "24h"}) for _ in range(3)]
    refused = [r for r in creates if r.status_code == 429]
    assert refused, [r.text for r in creates]
    assert all(r.json()["error"]["code"] == "rate_limited" for r in refused)


def test_the_cli_sets_and_clears_batch_caps_and_prefixes(stack: Stack) -> None:
    tenant, _ = new_tenant(stack)
    out = set_limits(stack, tenant, "--max-queued-batch-lines=500", "--max-active-batches=2",
                     "--image-url-prefix", "s3://bucket-a/team/", "--image-url-prefix",
                     "s3://bucket-b")
    assert "max queued batch lines: 500\n" in out and "max active batches: 2\n" in out
    assert "s3://bucket-a/team/, s3://bucket-b/" in out
    out = set_limits(stack, tenant, "--max-active-batches=default", "--no-image-url-prefixes")
    assert "max active batches: default (" in out and "max queued batch lines: 500\n" in out
    assert "s3:// image prefixes: none" in out
    bad = subprocess.run([sys.executable, "-m", "shared.cli", "keys", "limits", "--tenant",
                          tenant, "--image-url-prefix", "s3://bucket-a/x/../y"],
                         env=stack.env, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "'..'" in bad.stderr


# -- s3:// image prefixes per tenant ------------------------------------------------------


def settings() -> Settings:
    return Settings(store_url="s3://store-bucket/uploads",
                    image_fetch_allowed_buckets=["shared-images"])


@pytest.mark.parametrize(("text", "canonical"), [
    ("s3://shared-images/team-a", "s3://shared-images/team-a/"),
    ("s3://shared-images/team-a/", "s3://shared-images/team-a/"),
    ("s3://shared-images/team-a/2024", "s3://shared-images/team-a/2024/"),
    ("s3://shared-images", "s3://shared-images/"),
    ("s3://shared-images/", "s3://shared-images/"),
])
def test_prefixes_are_kept_as_whole_segments(text: str, canonical: str) -> None:
    assert canonical_prefix(text) == canonical


@pytest.mark.parametrize("text", [
    "https://shared-images/a", "s3://Bad_Bucket/a", "s3://shared-images/a/../b",
    "s3://shared-images/./a", "s3://shared-images/a//b", "s3://shared-images/a%2e%2e/b",
    "s3://shared-images/a\\b",
])
def test_bad_prefixes_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        canonical_prefix(text)


@pytest.mark.parametrize(("url", "allowed"), [
    ("s3://shared-images/team-a/x.png", True),
    ("s3://shared-images/team-a/deep/x.png", True),
    ("s3://shared-images/team-ab/x.png", False),  # a longer name, not a sub-folder
    ("s3://shared-images/team-a", False),
    ("s3://shared-images/TEAM-A/x.png", False),
    ("s3://other-images/team-a/x.png", False),
    ("s3://shared-images/team-a/../team-b/x.png", False),
    ("s3://shared-images/team-a/%2e%2e/team-b/x.png", False),
    ("s3://shared-images/team-a/..%2fteam-b/x.png", False),
])
def test_a_tenant_names_only_objects_under_its_prefixes(url: str, allowed: bool) -> None:
    prefixes = [canonical_prefix("s3://shared-images/team-a")]
    if allowed:
        assert isinstance(check_tenant_image_url(url, settings(), prefixes), S3ImageRef)
    else:
        with pytest.raises(ImageUrlRefused):
            check_tenant_image_url(url, settings(), prefixes)


def test_a_prefix_does_not_open_what_the_server_keeps_closed() -> None:
    # The tenant needs both: its own prefix, and a bucket the server reads (outside the
    # store's prefix, which holds every tenant's uploads).
    prefixes = ["s3://store-bucket/", "s3://elsewhere/"]
    with pytest.raises(ImageUrlRefused, match="this server's own"):
        check_tenant_image_url("s3://store-bucket/uploads/images/x", settings(), prefixes)
    with pytest.raises(ImageUrlRefused, match="is not one this server reads"):
        check_tenant_image_url("s3://elsewhere/x.png", settings(), prefixes)
    assert check_tenant_image_url("s3://store-bucket/refs/x.png", settings(), prefixes)
    # https references are not the prefixes' business.
    assert check_tenant_image_url("https://images.example.com/a.png", settings(), [])


@pytest.fixture(scope="module")
def echo_model(stack: Stack) -> Iterator[str]:
    model = f"tl-echo-{uuid.uuid4().hex[:6]}"
    st = stack.with_env(model=model, engine="echo", accepted_models=json.dumps([model]))
    worker = start_worker(st.env, st.log_dir, name=f"worker-{model}", timeout=120)
    yield model
    worker.stop()


def test_only_the_allowed_tenant_reads_its_prefix(api: str, stack: Stack,
                                                  echo_model: str) -> None:
    bucket, _ = store_location(stack.settings.store_url)
    folder = f"tl-{uuid.uuid4().hex[:6]}"
    s3 = s3_client(stack.settings)
    s3.put_object(Bucket=bucket, Key=f"{folder}/a/cat.png", Body=png_bytes(56, 42, seed=4))
    _, (key_a,) = new_tenant(stack, "--image-url-prefix", f"s3://{bucket}/{folder}/a")
    _, (key_b,) = new_tenant(stack, "--image-url-prefix", f"s3://{bucket}/{folder}/b")
    present, missing = (f"s3://{bucket}/{folder}/a/cat.png",
                        f"s3://{bucket}/{folder}/a/no-such.png")

    def job(key: str, url: str) -> httpx.Response:
        return httpx.post(f"{api}/v1/jobs", headers=bearer(key), timeout=30, json={
            "prompt": "Describe it.", "model": echo_model, "max_tokens": 4,
            "image": {"url": url}})

    def chat(key: str, url: str) -> httpx.Response:
        return httpx.post(f"{api}/v1/chat/completions", headers=bearer(key), timeout=30,
                          json={"model": echo_model, "max_tokens": 4, "messages": [
                              {"role": "user", "content": [
                                  {"type": "text", "text": "Describe it."},
                                  {"type": "image_url", "image_url": {"url": url}}]}]})

    for send in (job, chat):
        there, absent = send(key_b, present), send(key_b, missing)
        assert there.status_code == absent.status_code == 400, (there.text, absent.text)
        assert there.json() == absent.json()  # nothing tells which objects exist
        assert there.json()["error"]["code"] == "image_url_refused"
        assert "cat.png" not in there.text and "no-such" not in absent.text

    accepted = job(key_a, present)
    assert accepted.status_code == 202, accepted.text
    with httpx.Client(base_url=api, headers=bearer(key_a), timeout=30) as client:
        done = wait_terminal(client, accepted.json()["id"], timeout=60)
    assert done["status"] == "succeeded", done
    assert done["result"]["prompt_tokens"] > 0
    missing_job = job(key_a, missing)  # A may name it; the worker finds nothing there
    assert missing_job.status_code == 202, missing_job.text
