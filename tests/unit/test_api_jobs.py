"""The API app in-process (FastAPI's TestClient runs its lifespan) on the embedded setup:
a SQLite file, the folder broker and a local-folder store under tmp_path, and API keys
made in that database as `vlmq keys create` makes them. No server, no worker: submitted
jobs stay queued, which is all these routes need."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from shared.db import make_engine, make_session_factory
from shared.settings import Settings
from shared.tenancy import repo as tenancy_repo
from tests.helpers.embedded import embedded_settings
from tests.helpers.images import png_bytes

PNG = png_bytes(64, 48)


def make_key(settings: Settings, tenant: str) -> str:
    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            _, key = tenancy_repo.create_key(session, tenant, "unit test", is_admin=False)
            session.commit()
    finally:
        engine.dispose()
    return key


WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"unit-tier webhook secret, 32 b.").decode()


@pytest.fixture()
def settings(state_root: Path) -> Settings:
    return embedded_settings(state_root, webhook_secrets=[WEBHOOK_SECRET])


@pytest.fixture()
def app_client(settings: Settings) -> Iterator[TestClient]:
    """The app, started; no key on its requests."""
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture()
def client(app_client: TestClient, settings: Settings) -> TestClient:
    """Requests as tenant `alpha`."""
    app_client.headers["Authorization"] = f"Bearer {make_key(settings, 'alpha')}"
    return app_client


def submit(client: TestClient, prompt: str = "what is this?", *,
           headers: dict[str, str] | None = None, **fields: str) -> httpx.Response:
    return client.post("/v1/jobs", files={"image": ("a.png", PNG, "image/png")},
                       data={"prompt": prompt, **fields}, headers=headers)


def error_of(resp: httpx.Response) -> str:
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    return str(body["error"]["code"])


# --- health --------------------------------------------------------------------------------


def test_healthz_and_readyz(app_client: TestClient) -> None:
    assert app_client.get("/healthz").json() == {"status": "ok"}
    ready = app_client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True,
                            "checks": {"database": "ok", "broker": "ok", "store": "ok"}}


def test_readyz_names_an_unreachable_database_and_nothing_more(tmp_path: Path) -> None:
    # A SQLite file in a folder that does not exist cannot be opened.
    settings = embedded_settings(tmp_path, database_url=f"sqlite:///{tmp_path}/no/such/db")
    with TestClient(create_app(settings)) as client:
        resp = client.get("/readyz")
    assert resp.status_code == 503 and int(resp.headers["Retry-After"]) > 0
    assert resp.json() == {"ready": False, "checks": {"database": "unavailable",
                                                      "broker": "ok", "store": "ok"}}


# --- submit and read -----------------------------------------------------------------------


def test_multipart_submit_stores_the_image_and_queues_the_job(
    client: TestClient, settings: Settings, state_root: Path,
) -> None:
    resp = submit(client, "describe", max_tokens="7", temperature="0.5", priority="2")
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert resp.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert (job["status"], job["model"], job["prompt"]) == ("queued", settings.model, "describe")
    assert (job["params"]["max_tokens"], job["params"]["temperature"]) == (7, 0.5)
    assert (job["priority"], job["attempts"], job["result"], job["error"]) == (2, 0, None, None)
    assert job["image"]["format"] == "PNG"
    assert (job["image"]["width"], job["image"]["height"]) == (64, 48)
    assert job["image"]["bytes"] == len(PNG)
    stored = [p for p in (state_root / "objects").rglob("*") if p.is_file()]
    assert [p.read_bytes() for p in stored] == [PNG]

    read = client.get(f"/v1/jobs/{job['id']}")
    assert read.status_code == 200
    assert read.json()["id"] == job["id"] and read.json()["status"] == "queued"
    assert read.json()["queue_position"] is not None


def test_a_submit_wakes_the_models_workers_through_the_folder_broker(
    settings: Settings, state_root: Path,
) -> None:
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {make_key(settings, 'alpha')}"
        job_id = submit(client).json()["id"]
    # Wake-ups are sent from a background thread; the app's shutdown sends what is pending.
    messages = [json.loads(p.read_text()) for p in (state_root / "broker").glob("*.msg")]
    assert len(messages) == 1
    message = messages[0]
    assert message["headers"]["task"] == "vlmq.run_job"
    assert message["properties"]["delivery_info"]["routing_key"] == settings.queue_name
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert (args, kwargs) == ([job_id], {})


def test_json_submit_with_a_base64_image(client: TestClient) -> None:
    resp = client.post("/v1/jobs", json={
        "image": {"base64": base64.b64encode(PNG).decode()}, "prompt": "hello",
        "max_tokens": 3, "stop": ["\n"],
    })
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["prompt"] == "hello" and job["params"]["stop"] == ["\n"]
    assert job["image"]["sha256"] == submit(client).json()["image"]["sha256"]


def test_list_pages_with_a_cursor_and_filters(client: TestClient) -> None:
    ids = [submit(client, f"job {i}").json()["id"] for i in range(3)]
    first = client.get("/v1/jobs", params={"limit": 2})
    assert first.status_code == 200
    page = first.json()
    assert len(page["data"]) == 2 and page["next_cursor"]
    rest = client.get("/v1/jobs", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert rest["next_cursor"] is None
    listed = [j["id"] for j in page["data"] + rest["data"]]
    assert sorted(listed) == sorted(ids) and len(set(listed)) == 3

    client.post(f"/v1/jobs/{ids[0]}/cancel")
    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}).json()["data"]
    assert [j["id"] for j in cancelled] == [ids[0]]
    assert client.get("/v1/jobs", params={"model": "nobody-serves-this"}).json() == \
        {"data": [], "next_cursor": None}


def test_cancel_a_queued_job_once(client: TestClient) -> None:
    job_id = submit(client).json()["id"]
    resp = client.post(f"/v1/jobs/{job_id}/cancel")
    assert resp.status_code == 200
    job = resp.json()
    assert job["status"] == "cancelled" and job["finished_at"] is not None
    assert job["error"]["code"] == "cancelled"
    again = client.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409 and error_of(again) == "job_finished"
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"


def test_an_idempotency_key_replays_the_first_job(client: TestClient) -> None:
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    first = submit(client, "same", headers=key)
    second = submit(client, "same", headers=key)
    assert (first.status_code, second.status_code) == (202, 200)
    assert second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["Location"] == first.headers["Location"]
    assert len(client.get("/v1/jobs").json()["data"]) == 1

    reused = submit(client, "different", headers=key)
    assert reused.status_code == 409 and error_of(reused) == "idempotency_key_reused"
    bad = submit(client, headers={"Idempotency-Key": "x" * 201})
    assert bad.status_code == 400 and error_of(bad) == "invalid_idempotency_key"


# --- what clients get wrong ----------------------------------------------------------------


def test_keys_are_required_and_checked(app_client: TestClient) -> None:
    missing = app_client.get("/v1/jobs")
    assert missing.status_code == 401 and error_of(missing) == "missing_api_key"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = app_client.get("/v1/jobs", headers={"Authorization": "Bearer vlmq_nope_nope"})
    assert wrong.status_code == 401 and error_of(wrong) == "invalid_api_key"
    # Health probes need no key.
    assert app_client.get("/healthz").status_code == 200


def test_another_tenants_job_is_not_found(client: TestClient, settings: Settings) -> None:
    job_id = submit(client).json()["id"]
    other = {"Authorization": f"Bearer {make_key(settings, 'beta')}"}
    unknown = client.get(f"/v1/jobs/{uuid.uuid4()}")
    theirs = client.get(f"/v1/jobs/{job_id}", headers=other)
    assert unknown.status_code == theirs.status_code == 404
    assert error_of(unknown) == error_of(theirs) == "not_found"
    cancel = client.post(f"/v1/jobs/{job_id}/cancel", headers=other)
    assert cancel.status_code == 404
    assert client.get("/v1/jobs", headers=other).json()["data"] == []
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"


@pytest.mark.parametrize(
    ("send", "status", "code"),
    [
        (lambda c: c.post("/v1/jobs", content=b"prompt=x",
                          headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type"),
        (lambda c: c.post("/v1/jobs", content=b"{not json",
                          headers={"Content-Type": "application/json"}), 400, "invalid_json"),
        (lambda c: c.post("/v1/jobs", json={"prompt": "x"}), 400, "missing_image"),
        (lambda c: c.post("/v1/jobs", json={"image": {"base64": "AAAA"}}), 400,
         "missing_prompt"),
        (lambda c: c.post("/v1/jobs", json={"image": {"base64": "@@"}, "prompt": "x"}), 400,
         "invalid_base64"),
        (lambda c: c.post("/v1/jobs", json={"image": {"base64": "AAAA"}, "prompt": "x",
                                            "colour": 1}), 400, "unknown_field"),
        (lambda c: c.post("/v1/jobs", data={"prompt": "x"},
                          files={"other": ("a.png", PNG, "image/png")}), 400, "unknown_field"),
        (lambda c: c.post("/v1/jobs", files={"prompt": (None, "x"), "image": (None, "text")}),
         400, "missing_image"),
    ],
)
def test_malformed_submissions_are_4xx(
    client: TestClient, send: Callable[[TestClient], httpx.Response], status: int, code: str,
) -> None:
    resp = send(client)
    assert resp.status_code == status, resp.text
    assert error_of(resp) == code


def test_bad_uploads_and_values_are_4xx(client: TestClient) -> None:
    not_image = client.post("/v1/jobs", data={"prompt": "x"},
                            files={"image": ("a.png", b"just text", "image/png")})
    assert not_image.status_code == 400 and error_of(not_image) == "invalid_image"
    refused_hook = submit(client, webhook_url="https://127.0.0.1/hook")
    assert refused_hook.status_code == 400 and error_of(refused_hook) == "webhook_url_refused"
    for field, value in (("max_tokens", "0"), ("temperature", "-1"), ("priority", "99")):
        resp = submit(client, **{field: value})
        assert resp.status_code == 422 and error_of(resp) == "validation_error", field
        assert field in resp.json()["error"]["message"]
    for resp in (client.get("/v1/jobs/not-a-uuid"), client.get("/v1/jobs", params={"limit": 0})):
        assert resp.status_code == 422 and error_of(resp) == "validation_error"
    assert client.get("/v1/jobs").json()["data"] == []  # nothing was stored


def test_a_public_webhook_url_is_kept_with_its_events(client: TestClient) -> None:
    resp = submit(client, webhook_url="https://93.184.215.14/hook",
                  webhook_events="job.failed,job.succeeded")
    assert resp.status_code == 202, resp.text
    job = client.get(resp.headers["Location"]).json()
    assert job["webhook_url"] == "https://93.184.215.14/hook"
    assert sorted(job["webhook_events"]) == ["job.failed", "job.succeeded"]


def test_auth_disabled_acts_as_the_default_tenant(state_root: Path) -> None:
    settings = embedded_settings(state_root, auth_disabled=True)
    with TestClient(create_app(settings)) as client:
        resp = submit(client)
        assert resp.status_code == 202, resp.text
        assert client.get(resp.headers["Location"]).json()["status"] == "queued"
