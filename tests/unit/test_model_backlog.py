"""`GET /v1/models`' backlog fields in process on the embedded setup: a model's queued and
running jobs are counted across tenants, as the queue every tenant waits in, and nothing in
the answer names another tenant or any of its jobs."""

from __future__ import annotations

from fastapi.testclient import TestClient

from shared.db import make_engine, make_session_factory
from shared.models import Worker
from shared.settings import Settings
from tests.unit.test_api_jobs import make_key, submit


def _serve(settings: Settings) -> None:
    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            session.add(Worker(id="w1", model=settings.model, engine="echo", queue="q",
                               max_batch_size=8))
            session.commit()
    finally:
        engine.dispose()


def test_a_tenant_sees_its_models_whole_queue_but_no_one_elses_jobs(
    app: TestClient, settings: Settings,
) -> None:
    alpha = {"Authorization": f"Bearer {make_key(settings, 'alpha')}"}
    beta = {"Authorization": f"Bearer {make_key(settings, 'beta-secret-team')}"}
    theirs = [submit(app, "alpha's private prompt", headers=alpha).json()["id"]
              for _ in range(3)]
    submit(app, headers=beta)
    _serve(settings)

    resp = app.get("/v1/models", headers=beta)
    assert resp.status_code == 200, resp.text
    [model] = resp.json()["data"]
    assert (model["id"], model["queued"], model["running"]) == (settings.model, 4, 0)
    assert model["oldest_queued_seconds"] >= 0
    assert "alpha" not in resp.text and not any(job_id in resp.text for job_id in theirs)
    assert app.get("/v1/models").status_code == 401
