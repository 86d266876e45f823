"""Per-tenant submission rate and active-jobs quota: 429 with its headers, nothing stored."""

from __future__ import annotations

import subprocess
import sys
import uuid

import httpx
from sqlalchemy import func, select

from shared.models import Job
from tests.helpers.images import png_bytes
from tests.helpers.services import bearer, create_api_key
from tests.helpers.stack import Stack, db_sessions
from tests.helpers.store import count_objects, s3_client

PARKED = "parked"


def tenant_client(api: str, stack: Stack, **limits: str) -> tuple[httpx.Client, str]:
    tenant = f"limited-{uuid.uuid4().hex[:6]}"
    key = create_api_key(stack.settings.database_url, tenant)
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in limits.items()]
    subprocess.run([sys.executable, "-m", "shared.cli", "keys", "limits", "--tenant", tenant,
                    *flags], env=stack.env, check=True, capture_output=True, timeout=60)
    return httpx.Client(base_url=api, timeout=30, headers=bearer(key)), tenant


def submit(client: httpx.Client) -> httpx.Response:
    return client.post("/v1/jobs", files={"image": ("a.png", png_bytes(64, 48), "image/png")},
                       data={"prompt": "describe", "model": PARKED, "max_tokens": "4"})


def jobs_of(stack: Stack, tenant: str) -> int:
    with db_sessions(stack.settings)() as session:
        return session.scalar(select(func.count()).where(Job.tenant_id == tenant)) or 0


def stored_objects(stack: Stack) -> int:
    return count_objects(s3_client(stack.settings), stack.settings.store_url)


def test_over_the_rate_is_429_and_stores_nothing(api: str, stack: Stack) -> None:
    client, tenant = tenant_client(api, stack, submits_per_second="2")
    objects_before = stored_objects(stack)
    with client:
        responses = [submit(client) for _ in range(8)]
    accepted = [r for r in responses if r.status_code == 202]
    refused = [r for r in responses if r.status_code == 429]
    assert accepted and refused, [r.status_code for r in responses]
    assert len(accepted) + len(refused) == len(responses)
    for resp in refused:
        assert resp.json()["error"]["code"] == "rate_limited"
        assert int(resp.headers["retry-after"]) >= 1
        assert resp.headers["ratelimit-limit"] == "2"
        assert resp.headers["ratelimit-remaining"] == "0"
        assert int(resp.headers["ratelimit-reset"]) >= 1
    assert jobs_of(stack, tenant) == len(accepted)
    assert stored_objects(stack) - objects_before == len(accepted)


def test_the_active_jobs_quota_frees_up_as_jobs_end(api: str, stack: Stack) -> None:
    client, tenant = tenant_client(api, stack, max_active_jobs="3")
    with client:
        ids = [submit(client).json()["id"] for _ in range(3)]
        refused = submit(client)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "quota_exceeded"
        assert refused.headers["retry-after"]
        assert refused.headers["ratelimit-limit"] == "3"
        assert jobs_of(stack, tenant) == 3

        assert client.post(f"/v1/jobs/{ids[0]}/cancel").status_code == 200
        assert submit(client).status_code == 202
        assert jobs_of(stack, tenant) == 4


def test_one_tenants_limit_leaves_another_alone(api: str, stack: Stack,
                                                client: httpx.Client) -> None:
    limited, _ = tenant_client(api, stack, max_active_jobs="1")
    with limited:
        assert submit(limited).status_code == 202
        assert submit(limited).status_code == 429
    assert submit(client).status_code == 202
