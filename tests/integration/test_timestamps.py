"""Every timestamp the API writes out is timezone-aware UTC, on SQLite (which stores none)
as on Postgres, and a job's times read the same from POST, GET and the list."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from shared.db import make_engine, make_session_factory
from shared.migrate import upgrade_head
from shared.settings import Settings
from shared.tenancy import repo as tenancy_repo
from tests.helpers.embedded import embedded_settings
from tests.helpers.images import png_bytes
from tests.helpers.services import fresh_database

TIME_FIELDS = ("created_at", "started_at", "finished_at")


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    if request.param == "sqlite":
        settings = embedded_settings(tmp_path)
        upgrade_head(settings)
        yield settings
        return
    with fresh_database() as db_url:
        settings = embedded_settings(tmp_path, database_url=db_url)
        upgrade_head(settings)
        yield settings


def api_key(settings: Settings) -> str:
    engine = make_engine(settings)
    try:
        with make_session_factory(engine).begin() as session:
            return tenancy_repo.create_key(session, "clock", "test", False)[1]
    finally:
        engine.dispose()


def aware_utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    assert moment.tzinfo is not None, f"{text!r} has no time zone"
    assert moment.utcoffset() == timezone.utc.utcoffset(None), f"{text!r} is not UTC"
    return moment


def test_post_get_and_list_give_the_same_aware_utc_times(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {api_key(settings)}"
        posted = client.post(
            "/v1/jobs", data={"prompt": "When?"},
            files={"image": ("a.png", png_bytes(32, 32), "image/png")},
        ).json()
        read = client.get(f"/v1/jobs/{posted['id']}").json()
        listed = next(j for j in client.get("/v1/jobs").json()["data"] if j["id"] == posted["id"])
        batch_file = client.post("/v1/files", data={"purpose": "batch"},
                                 files={"file": ("in.jsonl", b"{}\n", "application/jsonl")})

    for job in (posted, read, listed):
        for field in TIME_FIELDS:
            if job.get(field) is not None:
                aware_utc(job[field])
    assert aware_utc(posted["created_at"]) == aware_utc(read["created_at"]) == aware_utc(
        listed["created_at"])
    # OpenAI objects carry Unix seconds, which have no zone to lose; they must still agree.
    assert abs(batch_file.json()["created_at"] - datetime.now(timezone.utc).timestamp()) < 300


def test_a_naive_value_from_the_database_is_read_as_utc(settings: Settings) -> None:
    from sqlalchemy import select

    from shared.models import Tenant

    engine = make_engine(settings)
    try:
        with make_session_factory(engine).begin() as session:
            session.add(Tenant(id="naive", created_at=datetime(2026, 1, 2, 3, 4, 5)))
        with make_session_factory(engine)() as session:
            created = session.scalar(select(Tenant.created_at).where(Tenant.id == "naive"))
    finally:
        engine.dispose()
    assert created == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


