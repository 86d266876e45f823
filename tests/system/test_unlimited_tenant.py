"""One tenant lifted above the server's defaults while the others keep them: `vlmq keys
limits` with `unlimited`, `default`, `--unlimited` and the retention options, against an
API process of this module's own with small defaults (2 active jobs, 2 submissions a
second, 1 batch in progress), Postgres and Redis; a bare 0 is refused.

What a tenant's value means, PATCH /v1/tenants and hostile values are covered in process
by tests/unit/test_tenant_limits.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from shared.models import Job, Tenant
from tests.helpers.images import png_bytes
from tests.helpers.services import bearer, create_api_key, start_api
from tests.helpers.stack import Stack, db_sessions

PARKED = "parked"  # accepted by the stack's API, served by no worker: jobs stay queued


@pytest.fixture(scope="module")
def small(stack: Stack) -> Iterator[tuple[Stack, str]]:
    st = stack.with_env(tenant_max_active_jobs="2", tenant_submits_per_second="2",
                        tenant_max_active_batches="1", tenant_max_queued_batch_lines="0",
                        retention_seconds="86400", keep_images="true")
    svc, base = start_api(st.env, st.log_dir, name="api-unlimited-tenant")
    yield st, base
    svc.stop()


def keys_limits(stack: Stack, tenant: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.cli", "keys", "limits", "--tenant",
                           tenant, *flags], env=stack.env, capture_output=True, text=True,
                          timeout=60)


def new_tenant(stack: Stack, *flags: str) -> tuple[str, str, str]:
    """A tenant, its key, and what `vlmq keys limits` printed for it."""
    tenant = f"ul-{uuid.uuid4().hex[:8]}"
    key = create_api_key(stack.settings.database_url, tenant)
    run = keys_limits(stack, tenant, *flags)
    assert run.returncode == 0, run.stderr
    return tenant, key, run.stderr


def row(stack: Stack, tenant: str) -> tuple[object, ...]:
    with db_sessions(stack.settings)() as session:
        t = session.get(Tenant, tenant)
        assert t is not None
        return (t.max_active_jobs, t.submits_per_second, t.max_queued_batch_lines,
                t.max_active_batches, t.retention_seconds, t.keep_images)


def submit(base: str, key: str) -> httpx.Response:
    return httpx.post(f"{base}/v1/jobs", headers=bearer(key), timeout=30,
                      files={"image": ("a.png", png_bytes(8, 8), "image/png")},
                      data={"prompt": "p", "model": PARKED, "max_tokens": "4"})


def create_batch(base: str, key: str) -> httpx.Response:
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": PARKED, "messages": [{"role": "user", "content": "hi"}]}}
    with httpx.Client(base_url=base, headers=bearer(key), timeout=30) as client:
        file = client.post("/v1/files", data={"purpose": "batch"}, files={
            "file": ("in.jsonl", json.dumps(line).encode(), "application/jsonl")})
        assert file.status_code == 200, file.text
        return client.post("/v1/batches", json={
            "input_file_id": file.json()["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h"})


def test_an_unlimited_tenant_passes_the_defaults_its_neighbours_keep(
    small: tuple[Stack, str],
) -> None:
    st, base = small
    lifted, lifted_key, out = new_tenant(st, "--unlimited")
    for words in ("max active jobs", "submits per second", "max queued batch lines",
                  "max active batches"):
        assert f"{words}: unlimited\n" in out, out
    assert row(st, lifted)[:4] == (0, 0.0, 0, 0)
    # Only its rate lifted: the default quota and batch cap still hold it.
    paced, paced_key, out = new_tenant(st, "--submits-per-second", "unlimited")
    assert "max active jobs: default (2)\n" in out and "max active batches: default (1)" in out

    # Past 2 active jobs and 2 submissions a second, and past 1 batch in progress.
    assert [submit(base, lifted_key).status_code for _ in range(6)] == [202] * 6
    assert [create_batch(base, lifted_key).status_code for _ in range(2)] == [200, 200]
    codes = [submit(base, paced_key) for _ in range(3)]
    assert [r.status_code for r in codes] == [202, 202, 429], [r.text for r in codes]
    assert codes[2].json()["error"]["code"] == "quota_exceeded"
    assert codes[2].headers["ratelimit-limit"] == "2"
    assert [create_batch(base, paced_key).status_code for _ in range(2)] == [200, 429]
    # A tenant on the defaults is held to 2 submissions a second.
    _, plain_key, _ = new_tenant(st)
    with ThreadPoolExecutor(6) as pool:
        uploads = list(pool.map(lambda _: httpx.post(
            f"{base}/v1/files", headers=bearer(plain_key), timeout=30, data={"purpose": "batch"},
            files={"file": ("in.jsonl", b'{"custom_id": "a"}\n', "application/jsonl")}),
            range(6)))
    refused = [r for r in uploads if r.status_code == 429]
    assert refused and all(r.json()["error"]["code"] == "rate_limited" for r in refused)

    # `default` puts it back under the server's quota, within a second or so.
    run = keys_limits(st, lifted, "--max-active-jobs", "default")
    assert run.returncode == 0, run.stderr
    assert "max active jobs: default (2)\n" in run.stderr
    assert "submits per second: unlimited\n" in run.stderr  # left out: stays
    assert row(st, lifted)[:4] == (None, 0.0, 0, 0)
    deadline = time.monotonic() + 15
    while (again := submit(base, lifted_key)).status_code == 202:
        assert time.monotonic() < deadline, "the default never applied again"
        time.sleep(0.3)
    assert again.status_code == 429 and again.json()["error"]["code"] == "quota_exceeded"


# Each is a process of its own (a second and a half): the words themselves, and every
# hostile value, are checked in tests/unit/test_tenant_limits.py.
REFUSALS = [
    (["--max-active-jobs", "0"], "bare 0 is ambiguous: say 'default'"),
    (["--retention", "0"], "say 'forever'"),
    (["--submits-per-second", "nan"], "above 0"),
    (["--unlimited", "--max-active-jobs", "5"], "give no other limit with it"),
]


def test_the_cli_refuses_and_changes_nothing(small: tuple[Stack, str]) -> None:
    st, _ = small
    tenant, _, _ = new_tenant(st, "--max-active-jobs", "7", "--retention", "1h",
                              "--max-active-batches", "4")
    before = row(st, tenant)
    assert before == (7, None, None, 4, 3600, None)
    for flags, says in REFUSALS:
        run = keys_limits(st, tenant, *flags, "--max-active-batches", "unlimited")
        assert run.returncode != 0, flags
        assert says in run.stderr, run.stderr
        assert row(st, tenant) == before


def test_retention_and_keep_images_per_tenant(small: tuple[Stack, str]) -> None:
    st, base = small
    tenant, key, out = new_tenant(st, "--retention", "30d", "--no-keep-images")
    assert "retention: 30 days\n" in out and "keep images: no\n" in out
    assert "max active jobs: default (2)\n" in out  # the limits are left as they were
    assert row(st, tenant)[4:] == (2_592_000, False)
    # The tenant's keep_images is what a job that does not say gets.
    job = submit(base, key)
    assert job.status_code == 202, job.text
    with db_sessions(st.settings)() as session:
        stored = session.get(Job, job.json()["id"])
        assert stored is not None and stored.keep_image is False

    out = keys_limits(st, tenant, "--retention", "forever", "--default-keep-images").stderr
    assert "retention: forever\n" in out and "keep images: default (yes)\n" in out
    assert row(st, tenant)[4:] == (0, None)
    out = keys_limits(st, tenant, "--retention", "default", "--keep-images").stderr
    assert "retention: default (1 day)\n" in out and "keep images: yes\n" in out
    assert row(st, tenant)[4:] == (None, True)
    out = keys_limits(st, tenant, "--retention", "90m").stderr  # keep images: left as is
    assert "retention: 90 minutes\n" in out and "keep images: yes\n" in out


def test_patch_over_postgres_tells_absent_from_null_from_zero(
    small: tuple[Stack, str],
) -> None:
    st, base = small
    tenant, _, _ = new_tenant(st)
    admin = bearer(create_api_key(st.settings.database_url, f"ul-ops-{uuid.uuid4().hex[:6]}",
                                  admin=True))
    with httpx.Client(base_url=base, headers=admin, timeout=30) as client:
        listed = client.get("/v1/tenants").json()
        assert listed["defaults"]["max_active_jobs"] == 2
        assert listed["defaults"]["retention_seconds"] == 86_400
        body = {"max_active_jobs": 0, "submits_per_second": 0.5, "retention_seconds": 0,
                "keep_images": False}
        resp = client.patch(f"/v1/tenants/{tenant}", json=body)
        assert resp.status_code == 200, resp.text
        assert row(st, tenant) == (0, 0.5, None, None, 0, False)
        resp = client.patch(f"/v1/tenants/{tenant}",
                            json={"submits_per_second": None, "max_active_batches": 3})
        assert resp.status_code == 200, resp.text
        assert row(st, tenant) == (0, None, None, 3, 0, False)
        bad = client.patch(f"/v1/tenants/{tenant}",
                           json={"max_active_jobs": None, "retention_seconds": -1})
        assert bad.status_code == 422
        assert row(st, tenant) == (0, None, None, 3, 0, False)
