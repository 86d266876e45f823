"""GET /v1/usage in-process on the embedded setup: jobs submitted and cancelled through the
API are in the ledger at once; a tenant reads its own usage only, an admin every tenant's
or one; a window or grouping that cannot be read is a 400 that says why."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import pytest
from fastapi.testclient import TestClient

from shared.settings import Settings
from tests.unit.test_api_jobs import make_key, submit
from tests.unit.test_api_keys import make_admin_key


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _usage(app: TestClient, key: str, **params: str) -> httpx.Response:
    return app.get("/v1/usage", params=params, headers=_bearer(key))


@pytest.fixture()
def keys(app: TestClient, settings: Settings) -> dict[str, str]:
    """Keys of tenants alpha and beta and an admin's; alpha submitted 3 jobs and cancelled
    one, beta submitted 1."""
    made = {"alpha": make_key(settings, "alpha"), "beta": make_key(settings, "beta"),
            "admin": make_admin_key(settings)}
    ids = [submit(app, headers=_bearer(made["alpha"])).json()["id"] for _ in range(3)]
    assert app.post(f"/v1/jobs/{ids[0]}/cancel", headers=_bearer(made["alpha"])).is_success
    assert submit(app, headers=_bearer(made["beta"])).is_success
    return made


def test_a_tenant_reads_its_own_usage(app: TestClient, keys: dict[str, str]) -> None:
    body = _usage(app, keys["alpha"], tenant="beta").json()  # `tenant` is for admins only
    assert (body["tenant"], body["group_by"], len(body["data"])) == ("alpha", "model", 1)
    row = body["data"][0]
    assert (row["tenant"], row["day"], row["accepted"], row["images"], row["cancelled"],
            row["succeeded"]) == ("alpha", None, 3, 3, 1, 0)
    assert body["total"]["accepted"] == 3
    end = datetime.fromisoformat(body["end"])
    assert end - datetime.fromisoformat(body["start"]) == timedelta(days=30)
    by_day = _usage(app, keys["alpha"], group_by="day").json()["data"]
    assert [(r["day"], r["model"], r["accepted"]) for r in by_day] == [
        (end.date().isoformat(), None, 3)]


def test_an_admin_reads_every_tenants_usage_or_one(app: TestClient,
                                                   keys: dict[str, str]) -> None:
    everyone = _usage(app, keys["admin"]).json()
    assert everyone["tenant"] is None
    assert [(r["tenant"], r["accepted"]) for r in everyone["data"]] == [("alpha", 3), ("beta", 1)]
    assert everyone["total"]["accepted"] == 4
    beta = _usage(app, keys["admin"], tenant="beta").json()
    assert [(r["tenant"], r["accepted"]) for r in beta["data"]] == [("beta", 1)]
    assert _usage(app, keys["admin"], tenant="be\x00ta").json()["data"] == []


def test_a_window_without_the_jobs_reads_nothing(app: TestClient,
                                                 keys: dict[str, str]) -> None:
    past = datetime.now(timezone.utc) - timedelta(days=60)
    body = _usage(app, keys["alpha"], start=past.date().isoformat(),
                  end=(past + timedelta(days=1)).isoformat()).json()
    assert body["data"] == [] and body["total"]["accepted"] == 0


@pytest.mark.parametrize(("params", "code"), [
    ({"start": "last week"}, "invalid_time"),
    ({"end": "2025-06-01\x00"}, "invalid_time"),
    ({"start": "2025-06-02", "end": "2025-06-01"}, "invalid_range"),
    ({"start": "2020-01-01", "end": "2025-01-01"}, "invalid_range"),
    ({"group_by": "tenant"}, "invalid_group_by"),
    ({"group_by": "day\x00"}, "invalid_group_by"),
])
def test_a_bad_query_is_a_400_that_says_why(app: TestClient, keys: dict[str, str],
                                           params: dict[str, str], code: str) -> None:
    refused = _usage(app, keys["alpha"], **params)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == code


def test_usage_needs_a_key(app: TestClient) -> None:
    assert app.get("/v1/usage").status_code == 401
