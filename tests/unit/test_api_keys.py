"""/v1/keys and /v1/tenants in-process on the embedded setup: an admin key lists, creates
(the key shown once), revokes keys and sets a tenant's limits; any other key is a 403 on
every one of them and learns nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shared.db import make_engine, make_session_factory
from shared.settings import Settings
from shared.tenancy import repo as tenancy_repo
from tests.helpers.embedded import embedded_settings
from tests.unit.test_api_jobs import error_of, make_key, submit


def make_admin_key(settings: Settings) -> str:
    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            _, key = tenancy_repo.create_key(session, "ops", "unit test", is_admin=True)
            session.commit()
    finally:
        engine.dispose()
    return key


@pytest.fixture()
def settings(state_root: Path) -> Settings:
    return embedded_settings(state_root, tenant_submits_per_second=0,
                             tenant_max_active_jobs=0)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_an_admin_creates_lists_and_revokes_keys(app: TestClient, settings: Settings) -> None:
    admin = bearer(make_admin_key(settings))
    created = app.post("/v1/keys", json={"tenant": "acme", "name": "backfill"}, headers=admin)
    assert created.status_code == 201, created.text
    body = created.json()
    key = body["key"]
    assert key.startswith(f"vlmq_{body['id']}_")
    assert (body["tenant"], body["name"], body["admin"], body["revoked_at"]) == (
        "acme", "backfill", False, None)
    # The new key works, as tenant acme.
    assert app.get("/v1/jobs", headers=bearer(key)).status_code == 200

    listed = app.get("/v1/keys", params={"tenant": "acme"}, headers=admin).json()["data"]
    assert [k["id"] for k in listed] == [body["id"]]
    assert "key" not in listed[0] and key not in app.get("/v1/keys", headers=admin).text
    assert {k["tenant"] for k in app.get("/v1/keys", headers=admin).json()["data"]} == {
        "acme", "ops"}

    revoked = app.post(f"/v1/keys/{body['id']}/revoke", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    deadline = time.monotonic() + 10  # keys are cached for a second
    while app.get("/v1/jobs", headers=bearer(key)).status_code != 401:
        assert time.monotonic() < deadline, "a revoked key still works"
        time.sleep(0.2)
    again = app.post(f"/v1/keys/{body['id']}/revoke", headers=admin)
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    missing = app.post("/v1/keys/000000000000/revoke", headers=admin)
    assert missing.status_code == 404 and error_of(missing) == "not_found"


def test_an_admin_sets_a_tenants_limits_and_they_apply(
    app: TestClient, settings: Settings,
) -> None:
    admin = bearer(make_admin_key(settings))
    acme = bearer(make_key(settings, "acme"))
    resp = app.patch("/v1/tenants/acme", json={"max_active_jobs": 1,
                                               "image_url_prefixes": ["s3://photos/acme"]},
                     headers=admin)
    assert resp.status_code == 200, resp.text
    tenant = resp.json()
    assert (tenant["max_active_jobs"], tenant["submits_per_second"]) == (1, None)
    assert tenant["image_url_prefixes"] == ["s3://photos/acme/"]
    tenants = {t["id"]: t for t in app.get("/v1/tenants", headers=admin).json()["data"]}
    assert tenants["acme"]["max_active_jobs"] == 1 and tenants["ops"]["max_active_jobs"] is None

    deadline = time.monotonic() + 10  # tenant rules are read at most once a second
    assert submit(app, headers=acme).status_code == 202
    while submit(app, headers=acme).status_code != 429:
        assert time.monotonic() < deadline, "the new limit never applied"
        time.sleep(0.2)
    # Left out stays; null is the server's default again.
    reset = app.patch("/v1/tenants/acme", json={"max_active_jobs": None}, headers=admin).json()
    assert reset["max_active_jobs"] is None and reset["image_url_prefixes"] == [
        "s3://photos/acme/"]


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/keys", None),
    ("POST", "/v1/keys", {"tenant": "acme"}),
    ("POST", "/v1/keys", {"nonsense": True}),
    ("POST", "/v1/keys/000000000000/revoke", None),
    ("GET", "/v1/tenants", None),
    ("PATCH", "/v1/tenants/acme", {"max_active_jobs": 5}),
])
def test_any_other_key_is_forbidden(app: TestClient, settings: Settings, method: str,
                                    path: str, body: object) -> None:
    tenant_key = bearer(make_key(settings, "acme"))
    resp = app.request(method, path, json=body, headers=tenant_key)
    assert resp.status_code == 403 and error_of(resp) == "forbidden"
    assert app.request(method, path, json=body).status_code == 401


# Far deeper than the API's JSON parsing accepts: refused before any handler runs. Raw
# bytes, as no client's encoder would write it.
NESTED = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), [
    ("POST", "/v1/keys", {"tenant": "Not A Name"}, 400, "invalid_tenant"),
    ("POST", "/v1/keys", {"tenant": "acme\n"}, 400, "invalid_tenant"),
    ("POST", "/v1/keys", {"tenant": "acme", "name": "a\u0000b"}, 422, "validation_error"),
    ("POST", "/v1/keys", {"tenant": "acme", "extra": 1}, 422, "validation_error"),
    ("PATCH", "/v1/tenants/nobody", {"max_active_jobs": 1}, 404, "not_found"),
    ("PATCH", "/v1/tenants/ops", {"max_active_jobs": -1}, 422, "validation_error"),
    ("PATCH", "/v1/tenants/ops", {"max_active_jobs": 2**31}, 422, "validation_error"),
    ("PATCH", "/v1/tenants/ops", {"max_active_jobs": 10**400}, 422, "validation_error"),
    ("PATCH", "/v1/tenants/ops", {"max_active_jobs": "5"}, 422, "validation_error"),
    ("PATCH", "/v1/tenants/ops", {"max_active_jobs": 2.5}, 422, "validation_error"),
    ("PATCH", "/v1/tenants/ops", {"max_active_jobs": True}, 422, "validation_error"),
    ("PATCH", "/v1/tenants/ops", {"max_active_batches": "unlimited"}, 422, "validation_error"),
    ("PATCH", "/v1/tenants/ops", {"max_queued_batch_lines": "\u0000"}, 422,
     "validation_error"),
    ("PATCH", "/v1/tenants/ops", {"submits_per_second": -0.5}, 422, "validation_error"),
    ("PATCH", "/v1/tenants/ops", {"submits_per_second": 1e10}, 422, "validation_error"),
    ("PATCH", "/v1/tenants/ops", b'{"submits_per_second": NaN}', 422, "validation_error"),
    ("PATCH", "/v1/tenants/ops", b'{"submits_per_second": Infinity}', 422,
     "validation_error"),
    ("PATCH", "/v1/tenants/ops", b'{"submits_per_second": -Infinity}', 422,
     "validation_error"),
    ("PATCH", "/v1/tenants/ops", {"retention_seconds": -1}, 422, "validation_error"),
    ("PATCH", "/v1/tenants/ops", {"retention_seconds": 2**31}, 422, "validation_error"),
    ("PATCH", "/v1/tenants/ops", {"retention_seconds": "30d"}, 422, "validation_error"),
    ("PATCH", "/v1/tenants/ops", {"keep_images": "no"}, 422, "validation_error"),
    ("PATCH", "/v1/tenants/ops", {"keep_images": 0}, 422, "validation_error"),
    ("PATCH", "/v1/tenants/ops", {"image_url_prefixes": ["https://x"]}, 400, "invalid_prefix"),
    ("POST", "/v1/keys/a%00b/revoke", None, 404, "not_found"),
    # Over-long and deeply nested input.
    ("POST", "/v1/keys", {"tenant": "a" * 65}, 422, "validation_error"),
    ("POST", "/v1/keys", {"tenant": "acme", "name": "n" * 201}, 422, "validation_error"),
    ("POST", f"/v1/keys/{'k' * 5000}/revoke", None, 404, "not_found"),
    ("PATCH", f"/v1/tenants/{'t' * 5000}", {"max_active_jobs": 1}, 404, "not_found"),
    ("PATCH", "/v1/tenants/ops", {"image_url_prefixes": ["s3://b/" + "p" * 5000]}, 422,
     "validation_error"),
    ("PATCH", "/v1/tenants/ops", {"image_url_prefixes": [f"s3://b/{i}/" for i in range(10_000)]},
     422, "validation_error"),
    ("PATCH", "/v1/tenants/ops", f'{{"max_active_jobs": {NESTED}}}'.encode(), 400,
     "invalid_json"),
    ("POST", "/v1/keys", f'{{"tenant": {NESTED}}}'.encode(), 400, "invalid_json"),
])
def test_bad_admin_requests_are_4xx(app: TestClient, settings: Settings, method: str,
                                    path: str, body: object, status: int, code: str) -> None:
    admin = bearer(make_admin_key(settings))
    if isinstance(body, bytes):
        resp = app.request(method, path, content=body,
                           headers={**admin, "Content-Type": "application/json"})
    else:
        resp = app.request(method, path, json=body, headers=admin)
    assert resp.status_code == status, resp.text
    assert error_of(resp) == code
