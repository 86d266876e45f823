"""A tenant's own limits beside the server's defaults: null is the default, 0 no limit for
that tenant alone, N is N; the words `vlmq keys limits` takes for them; and PATCH
/v1/tenants telling a field left out (kept) from a null (back to the default), in process
on the embedded setup with small defaults."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from shared.cli.keys import (
    describe_keep_images,
    describe_limit,
    describe_retention,
    parse_limit,
    parse_retention,
)
from shared.db import make_engine, make_session_factory
from shared.errors import InvalidInput
from shared.settings import Settings
from shared.tenancy import repo as tenancy_repo
from shared.tenancy.limits import KEEP, effective_limit
from tests.helpers.embedded import embedded_settings
from tests.unit.test_api_jobs import error_of, make_key, submit
from tests.unit.test_api_keys import bearer, make_admin_key

# -- what a tenant's value means ----------------------------------------------------------


@pytest.mark.parametrize(("own", "default", "applies"), [
    (None, 10, 10),     # unset: the server's default
    (None, 0, None),    # unset, and the server has no limit
    (0, 10, None),      # lifted for this tenant alone
    (0, 0, None),
    (500, 10, 500),     # its own, above the default
    (3, 10, 3),         # or below it
    (3, 0, 3),          # a limit where the server has none
    (None, 0.5, 0.5),
    (0.0, 100.0, None),
    (2.5, 100.0, 2.5),
])
def test_effective_limit(own: float | None, default: float, applies: float | None) -> None:
    assert effective_limit(own, default) == applies


# -- the CLI's words ----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "whole", "value"), [
    ("default", True, None), ("DEFAULT", True, None), (" unlimited ", True, 0),
    ("500", True, 500), ("1", True, 1), (str(2**31 - 1), True, 2**31 - 1),
    ("0.5", False, 0.5), ("200", False, 200.0), ("unlimited", False, 0),
    ("default", False, None), ("1e9", False, 1e9),
])
def test_a_limit_is_a_number_default_or_unlimited(text: str, whole: bool,
                                                  value: float | None) -> None:
    assert parse_limit(text, whole=whole) == value


@pytest.mark.parametrize(("text", "whole"), [
    ("-1", True), ("-0.5", False), ("2.5", True), ("1e3", True), (str(2**31), True),
    ("9" * 5000, True), ("nan", False), ("inf", False), ("-inf", False), ("1e10", False),
    ("1e999", False), ("", True), ("five", True), ("none", True), ("5\x00", True),
    ("\x00", False), ("unlimited!", True),
])
def test_a_bad_limit_is_refused(text: str, whole: bool) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_limit(text, whole=whole)


@pytest.mark.parametrize(("text", "whole"), [("0", True), ("00", True), ("0", False),
                                             ("0.0", False), ("-0", False)])
def test_a_bare_zero_is_refused_with_the_words_to_use(text: str, whole: bool) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="'default'.*'unlimited'"):
        parse_limit(text, whole=whole)


@pytest.mark.parametrize(("text", "seconds"), [
    ("default", None), ("forever", 0), ("Forever", 0), ("3600", 3600), ("45s", 45),
    ("90m", 5400), ("12h", 43200), ("30d", 2_592_000), (" 7d ", 604_800),
    (str(2**31 - 1), 2**31 - 1),
])
def test_a_retention_is_seconds_a_duration_default_or_forever(text: str,
                                                              seconds: int | None) -> None:
    assert parse_retention(text) == seconds


@pytest.mark.parametrize("text", [
    "-1", "-1d", "1.5d", "30 days", "1w", "d", "", "nan", "inf", "9" * 5000, "25000d",
    str(2**31), "1d12h", "3\x00", "٣d",  # an Arabic-Indic three: ASCII digits only
])
def test_a_bad_retention_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_retention(text)


@pytest.mark.parametrize("text", ["0", "0d", "00s"])
def test_a_zero_retention_is_refused_with_the_words_to_use(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="'forever'.*'default'"):
        parse_retention(text)


def test_settings_are_described_in_words() -> None:
    assert describe_limit(None, 10_000) == "default (10000)"
    assert describe_limit(None, 0) == "default (unlimited)"
    assert describe_limit(0, 10_000) == "unlimited"
    assert describe_limit(500, 10_000) == "500"
    assert describe_limit(0.5, 100.0) == "0.5"
    assert describe_limit(None, 100.0) == "default (100)"
    assert describe_retention(None, 2_592_000) == "default (30 days)"
    assert describe_retention(0, 2_592_000) == "forever"
    assert describe_retention(3600, 0) == "1 hour"
    assert describe_retention(5400, 0) == "90 minutes"
    assert describe_retention(61, 0) == "61 seconds"
    assert describe_retention(None, 0) == "default (forever)"
    assert describe_keep_images(None, True) == "default (yes)"
    assert describe_keep_images(False, True) == "no"


# -- the repository refuses what no caller should pass -------------------------------------


def test_the_repository_checks_every_value_before_setting_any(settings: Settings) -> None:
    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            tenancy_repo.ensure_tenant(session, "acme")
            for bad in ({"max_active_jobs": -1}, {"max_active_jobs": 2**31},
                        {"max_active_jobs": True}, {"submits_per_second": float("nan")},
                        {"submits_per_second": float("inf")}, {"submits_per_second": -1.0},
                        {"retention_seconds": -5}, {"keep_images": "yes"}):
                with pytest.raises(InvalidInput):
                    tenancy_repo.set_limits(session, "acme", **{
                        "max_active_batches": 7, "retention_seconds": 0, **bad})
                tenant = tenancy_repo.set_limits(session, "acme")  # KEEP everywhere: a read
                assert (tenant.max_active_batches, tenant.retention_seconds) == (None, None)
            assert tenancy_repo.set_limits(session, "acme", max_active_jobs=KEEP) is tenant
    finally:
        engine.dispose()


# -- PATCH /v1/tenants and the limits that follow, on small defaults ----------------------


@pytest.fixture()
def settings(state_root: Path) -> Settings:
    return embedded_settings(state_root, tenant_max_active_jobs=2, tenant_submits_per_second=0,
                             tenant_max_active_batches=1, tenant_max_queued_batch_lines=0,
                             retention_seconds=86_400, keep_images=True)


def patch(app: TestClient, admin: dict[str, str], tenant: str, body: object) -> httpx.Response:
    return app.patch(f"/v1/tenants/{tenant}", json=body, headers=admin)


def tenants(app: TestClient, admin: dict[str, str]) -> dict[str, dict[str, object]]:
    return {t["id"]: t for t in app.get("/v1/tenants", headers=admin).json()["data"]}


FIELDS = ("max_active_jobs", "submits_per_second", "max_queued_batch_lines",
          "max_active_batches", "retention_seconds", "keep_images")


def test_patch_tells_absent_from_null_from_zero(app: TestClient, settings: Settings) -> None:
    admin = bearer(make_admin_key(settings))
    make_key(settings, "acme")
    listed = app.get("/v1/tenants", headers=admin).json()
    assert listed["defaults"] == {
        "max_active_jobs": 2, "submits_per_second": 0.0, "max_queued_batch_lines": 0,
        "max_active_batches": 1, "retention_seconds": 86_400, "keep_images": True}
    assert all(listed["data"][0][name] is None for name in FIELDS)

    every = {"max_active_jobs": 0, "submits_per_second": 2.5, "max_queued_batch_lines": 900,
             "max_active_batches": 0, "retention_seconds": 0, "keep_images": False}
    resp = patch(app, admin, "acme", every)
    assert resp.status_code == 200, resp.text
    assert {name: resp.json()[name] for name in FIELDS} == every
    # Absent: stays. Null: back to the server's default. N: N.
    resp = patch(app, admin, "acme", {"max_active_jobs": None, "keep_images": None,
                                      "max_active_batches": 4})
    assert resp.status_code == 200, resp.text
    assert {name: resp.json()[name] for name in FIELDS} == {
        **every, "max_active_jobs": None, "keep_images": None, "max_active_batches": 4}
    assert tenants(app, admin)["acme"] == resp.json()
    assert patch(app, admin, "acme", {}).json() == resp.json()  # nothing named, nothing changes
    assert patch(app, admin, "acme", {"retention_seconds": 3600, "keep_images": True}).json()[
        "retention_seconds"] == 3600


@pytest.mark.parametrize("bad", [
    {"max_active_jobs": -1}, {"max_active_jobs": "0"}, {"submits_per_second": 1e12},
    {"retention_seconds": -1}, {"keep_images": "false"}, {"max_active_batches": 0.5},
    {"max_queued_batch_lines": "\u0000"}, {"nonsense": 1},
])
def test_a_refused_patch_changes_nothing(app: TestClient, settings: Settings,
                                         bad: dict[str, object]) -> None:
    admin = bearer(make_admin_key(settings))
    make_key(settings, "acme")
    before = patch(app, admin, "acme", {"max_active_jobs": 7, "retention_seconds": 60}).json()
    resp = patch(app, admin, "acme", {"max_active_jobs": 0, "max_active_batches": 3,
                                      "retention_seconds": None, **bad})
    assert resp.status_code == 422 and error_of(resp) == "validation_error", resp.text
    assert tenants(app, admin)["acme"] == before


def wait_for(check: object, what: str) -> None:
    deadline = time.monotonic() + 10  # tenant rules are read at most once a second
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_an_unlimited_tenant_passes_the_default_its_neighbour_keeps(
    app: TestClient, settings: Settings,
) -> None:
    admin = bearer(make_admin_key(settings))
    lifted, kept = bearer(make_key(settings, "lifted")), bearer(make_key(settings, "kept"))
    assert patch(app, admin, "lifted", {"max_active_jobs": 0}).status_code == 200
    for _ in range(4):  # past the default of 2
        resp = submit(app, headers=lifted)
        assert resp.status_code == 202, resp.text
    assert [submit(app, headers=kept).status_code for _ in range(3)] == [202, 202, 429]
    # Back to the default: its 4 active jobs are now over it.
    assert patch(app, admin, "lifted", {"max_active_jobs": None}).status_code == 200
    wait_for(lambda: submit(app, headers=lifted).status_code == 429,
             "the default never applied again")
    refused = submit(app, headers=lifted)
    assert refused.status_code == 429 and error_of(refused) == "quota_exceeded"
    assert refused.headers["ratelimit-limit"] == "2"


def test_an_unlimited_tenant_passes_the_default_batch_cap(app: TestClient,
                                                          settings: Settings) -> None:
    admin = bearer(make_admin_key(settings))
    lifted, kept = bearer(make_key(settings, "lifted")), bearer(make_key(settings, "kept"))
    assert patch(app, admin, "lifted", {"max_active_batches": 0}).status_code == 200

    def create(headers: dict[str, str]) -> httpx.Response:
        line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}
        file = app.post("/v1/files", headers=headers, data={"purpose": "batch"},
                        files={"file": ("in.jsonl", json.dumps(line).encode(),
                                        "application/jsonl")})
        assert file.status_code == 200, file.text
        return app.post("/v1/batches", headers=headers, json={
            "input_file_id": file.json()["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h"})

    assert [create(lifted).status_code for _ in range(3)] == [200, 200, 200]
    assert [create(kept).status_code for _ in range(2)] == [200, 429]
    assert patch(app, admin, "lifted", {"max_active_batches": None}).status_code == 200
    wait_for(lambda: create(lifted).status_code == 429, "the default cap never applied again")
