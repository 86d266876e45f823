"""API keys and tenancy: two tenants A and B and an admin, against the real API process.

B must not read, list, wait on, cancel or redeliver anything of A's; every such attempt
is a 404 or an absent row, as if A's objects did not exist. An admin key sees both.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from shared.jobs import lifecycle
from shared.jobs.status import JobStatus
from shared.models import ApiKey, Job
from shared.webhooks import repo as deliveries_repo
from tests.helpers.images import png_bytes
from tests.helpers.services import bearer, create_api_key
from tests.helpers.stack import Stack, db_sessions

PARKED = "parked"  # no worker serves it: jobs stay queued


@dataclass
class Tenants:
    a: httpx.Client
    b: httpx.Client
    admin: httpx.Client
    anonymous: httpx.Client
    a_name: str
    b_name: str


@pytest.fixture(scope="module")
def tenants(api: str, stack: Stack) -> Iterator[Tenants]:
    tag = uuid.uuid4().hex[:6]
    a_name, b_name = f"team-a-{tag}", f"team-b-{tag}"
    url = stack.settings.database_url
    clients = [
        httpx.Client(base_url=api, timeout=30, headers=bearer(create_api_key(url, a_name))),
        httpx.Client(base_url=api, timeout=30, headers=bearer(create_api_key(url, b_name))),
        httpx.Client(base_url=api, timeout=30,
                     headers=bearer(create_api_key(url, f"ops-{tag}", admin=True))),
        httpx.Client(base_url=api, timeout=30),
    ]
    yield Tenants(*clients, a_name=a_name, b_name=b_name)
    for c in clients:
        c.close()


def submit(client: httpx.Client, prompt: str = "describe", **headers: str) -> httpx.Response:
    return client.post(
        "/v1/jobs",
        files={"image": ("a.png", png_bytes(64, 48), "image/png")},
        data={"prompt": prompt, "model": PARKED, "max_tokens": "4"},
        headers=headers,
    )


def job_with_delivery(stack: Stack, tenant: str) -> tuple[uuid.UUID, uuid.UUID]:
    """A cancelled job of `tenant` with a webhook delivery row (no sender needed)."""
    job = Job(
        tenant_id=tenant, model=PARKED, prompt="p", params={}, image_key="k",
        image_sha256="0" * 64, image_bytes=1, image_format="PNG", image_width=1,
        image_height=1, webhook_url="https://hooks.example.com/x", status=JobStatus.queued,
    )
    with db_sessions(stack.settings)() as session:
        session.add(job)
        session.flush()
        lifecycle.cancel(session, job.id)
        session.commit()
        [delivery] = deliveries_repo.for_job(session, job.id)
        return job.id, delivery.id


def test_every_v1_route_needs_a_key(tenants: Tenants) -> None:
    anon = tenants.anonymous
    some = uuid.uuid4()
    calls = [
        anon.post("/v1/jobs", json={"prompt": "x", "image": {"base64": "AA=="}}),
        anon.get("/v1/jobs"),
        anon.get(f"/v1/jobs/{some}"),
        anon.post(f"/v1/jobs/{some}/cancel"),
        anon.get(f"/v1/jobs/{some}/deliveries"),
        anon.get("/v1/models"),
        anon.get("/v1/deliveries"),
        anon.get(f"/v1/deliveries/{some}"),
        anon.post(f"/v1/deliveries/{some}/redeliver"),
    ]
    for resp in calls:
        assert resp.status_code == 401, (resp.request.url, resp.text)
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert resp.json()["error"]["code"] == "missing_api_key"
    assert anon.get("/healthz").status_code == 200
    assert anon.get("/readyz").status_code == 200


@pytest.mark.parametrize("header", [
    "Bearer vlmq_000000000000_" + "x" * 43,  # well formed, unknown
    "Bearer not-a-key",
    "Basic dXNlcjpwYXNz",
    "Bearer",
])
def test_a_bad_key_is_401(tenants: Tenants, header: str) -> None:
    resp = tenants.anonymous.get("/v1/jobs", headers={"Authorization": header})
    assert resp.status_code == 401, resp.text
    assert "Bearer" in resp.headers["www-authenticate"]


def test_a_key_with_a_wrong_secret_is_refused(tenants: Tenants) -> None:
    real = tenants.a.headers["authorization"]
    forged = real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")
    resp = tenants.anonymous.get("/v1/jobs", headers={"Authorization": forged})
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "invalid_api_key"


def test_another_tenants_job_is_not_found(tenants: Tenants) -> None:
    job_id = submit(tenants.a).json()["id"]
    assert tenants.a.get(f"/v1/jobs/{job_id}").status_code == 200
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}?wait=5",
                 f"/v1/jobs/{job_id}/deliveries"):
        started = time.monotonic()
        resp = tenants.b.get(path)
        assert resp.status_code == 404, (path, resp.text)
        assert time.monotonic() - started < 4, "a foreign job must not be waited on"
    assert tenants.b.post(f"/v1/jobs/{job_id}/cancel").status_code == 404
    assert tenants.a.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    assert tenants.admin.get(f"/v1/jobs/{job_id}").status_code == 200


def test_lists_are_scoped_and_admins_filter_by_tenant(tenants: Tenants) -> None:
    a_id = submit(tenants.a).json()["id"]
    b_id = submit(tenants.b).json()["id"]

    def ids(client: httpx.Client, **params: str) -> set[str]:
        return {j["id"] for j in client.get("/v1/jobs", params={"limit": 500, **params})
                .json()["data"]}

    assert a_id in ids(tenants.a) and b_id not in ids(tenants.a)
    assert b_id in ids(tenants.b) and a_id not in ids(tenants.b)
    # A tenant filter gives a non-admin nothing beyond its own.
    assert a_id not in ids(tenants.b, tenant=tenants.a_name)
    assert {a_id, b_id} <= ids(tenants.admin)
    only_a = ids(tenants.admin, tenant=tenants.a_name)
    assert a_id in only_a and b_id not in only_a


def test_an_admin_cancels_across_tenants(tenants: Tenants) -> None:
    job_id = submit(tenants.a).json()["id"]
    resp = tenants.admin.post(f"/v1/jobs/{job_id}/cancel")
    assert resp.status_code == 200
    assert tenants.a.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"


def test_idempotency_keys_are_per_tenant(tenants: Tenants) -> None:
    key = f"same-{uuid.uuid4().hex}"
    first_a = submit(tenants.a, **{"Idempotency-Key": key})
    first_b = submit(tenants.b, **{"Idempotency-Key": key})
    assert first_a.status_code == 202 and first_b.status_code == 202
    assert first_a.json()["id"] != first_b.json()["id"]
    again_a = submit(tenants.a, **{"Idempotency-Key": key})
    assert again_a.status_code == 200
    assert again_a.json()["id"] == first_a.json()["id"]
    # The same key with another request body is still a conflict within one tenant.
    assert submit(tenants.b, "other", **{"Idempotency-Key": key}).status_code == 409


def test_deliveries_belong_to_the_jobs_tenant(tenants: Tenants, stack: Stack) -> None:
    job_id, delivery_id = job_with_delivery(stack, tenants.a_name)
    assert tenants.a.get(f"/v1/deliveries/{delivery_id}").status_code == 200
    assert tenants.a.get(f"/v1/jobs/{job_id}/deliveries").json()["data"]
    assert tenants.b.get(f"/v1/deliveries/{delivery_id}").status_code == 404
    assert tenants.b.post(f"/v1/deliveries/{delivery_id}/redeliver").status_code == 404
    listed_b = tenants.b.get("/v1/deliveries", params={"limit": 500}).json()["data"]
    assert delivery_id not in {d["id"] for d in listed_b}
    listed_a = tenants.a.get("/v1/deliveries", params={"limit": 500}).json()["data"]
    assert str(delivery_id) in {d["id"] for d in listed_a}
    assert tenants.admin.post(f"/v1/deliveries/{delivery_id}/redeliver").status_code == 202
    by_tenant = tenants.admin.get(
        "/v1/deliveries", params={"limit": 500, "tenant": tenants.b_name}).json()["data"]
    assert str(delivery_id) not in {d["id"] for d in by_tenant}


def vlmq(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], env=stack.env,
                          capture_output=True, text=True, timeout=60, check=True)


def test_keys_cli_creates_lists_and_revokes(api: str, stack: Stack) -> None:
    tenant = f"cli-{uuid.uuid4().hex[:6]}"
    created = vlmq(stack, "keys", "create", "--tenant", tenant, "--name", "ci")
    key = created.stdout.strip()
    assert key.startswith("vlmq_") and "\n" not in key  # the key alone on stdout
    key_id = key.split("_")[1]
    assert key_id in created.stderr

    with httpx.Client(base_url=api, timeout=30, headers=bearer(key)) as client:
        assert client.get("/v1/jobs").status_code == 200
        with db_sessions(stack.settings)() as session:
            row = session.get(ApiKey, key_id)
            assert row is not None and row.last_used_at is not None
            assert key not in (row.secret_sha256, row.id)  # only a hash is stored
        listed = vlmq(stack, "keys", "list", "--tenant", tenant).stdout
        assert key_id in listed and key not in listed

        vlmq(stack, "keys", "revoke", key_id)
        # Verified keys are remembered for at most a second.
        time.sleep(1.2)
        resp = client.get("/v1/jobs")
        assert resp.status_code == 401, resp.text
        assert resp.json()["error"]["code"] == "invalid_api_key"


def test_tenant_names_are_checked(stack: Stack) -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "shared.cli", "keys", "create", "--tenant", "Not A Name"],
        env=stack.env, capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode != 0
    assert "tenant name" in bad.stderr and not bad.stdout
