"""GET /v1/stats/throughput in-process on SQLite (the console's system test reads it on
Postgres): succeeded jobs and their tokens per minute, every minute of the window present,
scoped like every other read."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from shared.db import make_engine, make_session_factory
from shared.jobs.status import JobStatus
from shared.models import Job
from shared.settings import Settings
from shared.timeutil import utcnow
from tests.unit.test_api_jobs import make_key
from tests.unit.test_api_keys import make_admin_key


def add_jobs(settings: Settings, *jobs: tuple[str, str, JobStatus, datetime, int]) -> None:
    """(tenant, model, status, finished_at, completion tokens) each."""
    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            for tenant, model, status, finished, tokens in jobs:
                session.add(Job(tenant_id=tenant, model=model, prompt="p", params={},
                                image_key="k", status=status, created_at=finished,
                                finished_at=finished, prompt_tokens=10,
                                completion_tokens=tokens))
            session.commit()
    finally:
        engine.dispose()


def minute(moment: datetime) -> str:
    return moment.replace(second=0, microsecond=0).isoformat().replace("+00:00", "Z")


def by_minute(resp_json: dict) -> dict[str, tuple[int, int, int]]:
    return {m["start"]: (m["images"], m["prompt_tokens"], m["completion_tokens"])
            for m in resp_json["data"] if m["images"]}


def test_succeeded_jobs_count_per_minute_for_the_callers_tenant_only(
    app: TestClient, settings: Settings,
) -> None:
    alpha = {"Authorization": f"Bearer {make_key(settings, 'alpha')}"}
    make_key(settings, "beta")
    now = utcnow()
    recent, older = now - timedelta(minutes=5), now - timedelta(minutes=30)
    gone = now - timedelta(hours=2)
    add_jobs(settings,
             ("alpha", "m1", JobStatus.succeeded, recent, 7),
             ("alpha", "m2", JobStatus.succeeded, recent, 3),
             ("alpha", "m1", JobStatus.succeeded, older, 5),
             ("alpha", "m1", JobStatus.failed, recent, 0),  # no image done
             ("alpha", "m1", JobStatus.succeeded, gone, 1),  # before the window
             ("beta", "m1", JobStatus.succeeded, recent, 100))  # another tenant's

    resp = app.get("/v1/stats/throughput", headers=alpha)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["minutes"] == 60 and body["model"] is None
    assert len(body["data"]) == 60
    starts = [m["start"] for m in body["data"]]
    assert starts == sorted(starts)
    assert starts[-1] in (minute(now), minute(utcnow()))  # the current minute comes last
    assert by_minute(body) == {minute(recent): (2, 20, 10), minute(older): (1, 10, 5)}

    only_m1 = app.get("/v1/stats/throughput", params={"model": "m1", "minutes": 10},
                      headers=alpha).json()
    assert len(only_m1["data"]) == 10 and by_minute(only_m1) == {minute(recent): (1, 10, 7)}
    # A tenant's key cannot widen its view with ?tenant=.
    assert by_minute(app.get("/v1/stats/throughput", params={"tenant": "beta"},
                             headers=alpha).json()) == by_minute(body)


def test_an_admin_key_sees_every_tenant_or_the_one_it_names(
    app: TestClient, settings: Settings,
) -> None:
    admin = {"Authorization": f"Bearer {make_admin_key(settings)}"}
    recent = utcnow() - timedelta(minutes=2)
    add_jobs(settings, ("ops", "m1", JobStatus.succeeded, recent, 1))
    make_key(settings, "beta")
    add_jobs(settings, ("beta", "m1", JobStatus.succeeded, recent, 4))
    every = app.get("/v1/stats/throughput", headers=admin).json()
    assert by_minute(every) == {minute(recent): (2, 20, 5)}
    beta = app.get("/v1/stats/throughput", params={"tenant": "beta"}, headers=admin).json()
    assert by_minute(beta) == {minute(recent): (1, 10, 4)}


@pytest.mark.parametrize("params", [{"minutes": 0}, {"minutes": 1441}, {"model": "x" * 300},
                                    {"tenant": "t" * 300}, {"minutes": "1" * 5000}])
def test_a_window_out_of_range_is_a_422(app: TestClient, settings: Settings,
                                        params: dict) -> None:
    alpha = {"Authorization": f"Bearer {make_key(settings, 'alpha')}"}
    assert app.get("/v1/stats/throughput", params=params, headers=alpha).status_code == 422
    assert app.get("/v1/stats/throughput").status_code == 401


@pytest.mark.parametrize("params", [{"model": "m1\x00"}, {"tenant": "alpha\x00"}])
def test_a_nul_in_a_filter_matches_nothing(app: TestClient, settings: Settings,
                                           params: dict) -> None:
    admin = {"Authorization": f"Bearer {make_admin_key(settings)}"}
    add_jobs(settings, ("alpha", "m1", JobStatus.succeeded, utcnow() - timedelta(minutes=2), 1))
    resp = app.get("/v1/stats/throughput", params=params, headers=admin)
    assert resp.status_code == 200, resp.text
    assert by_minute(resp.json()) == {}
