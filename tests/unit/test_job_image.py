"""`GET /v1/jobs/{id}/image`, in-process on the embedded setup (SQLite, a local-folder store):
the stored bytes with their own content type, tenant-scoped like GET /v1/jobs/{id}, and a
clear 409 for a job whose image was given by reference."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shared.db import make_engine, make_session_factory
from shared.models import Job
from shared.settings import Settings
from tests.helpers.images import png_bytes
from tests.unit.test_api_jobs import error_of, make_key
from tests.unit.test_api_keys import make_admin_key


def as_tenant(app: TestClient, settings: Settings, tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(settings, tenant)}"}


def submit(app: TestClient, headers: dict[str, str], image: bytes, name: str,
           content_type: str) -> str:
    resp = app.post("/v1/jobs", files={"image": (name, image, content_type)},
                    data={"prompt": "what is this?"}, headers=headers)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


@pytest.mark.parametrize(("fmt", "content_type", "extension"),
                         [("PNG", "image/png", "png"), ("JPEG", "image/jpeg", "jpg")])
def test_the_stored_image_comes_back_byte_for_byte_with_its_type(
    app: TestClient, settings: Settings, fmt: str, content_type: str, extension: str,
) -> None:
    alpha = as_tenant(app, settings, "alpha")
    image = png_bytes(80, 60, seed=4, fmt=fmt)
    job_id = submit(app, alpha, image, f"a.{extension}", content_type)
    resp = app.get(f"/v1/jobs/{job_id}/image", headers=alpha)
    assert resp.status_code == 200
    assert resp.content == image
    assert resp.headers["content-type"] == content_type
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in resp.headers["content-security-policy"]
    assert resp.headers["content-disposition"] == f'inline; filename="{job_id}.{extension}"'


def test_another_tenants_image_is_not_found_like_an_unknown_id(
    app: TestClient, settings: Settings,
) -> None:
    alpha, beta = as_tenant(app, settings, "alpha"), as_tenant(app, settings, "beta")
    job_id = submit(app, alpha, png_bytes(64, 48), "a.png", "image/png")
    theirs = app.get(f"/v1/jobs/{job_id}/image", headers=beta)
    unknown = app.get(f"/v1/jobs/{uuid.uuid4()}/image", headers=beta)
    assert theirs.status_code == unknown.status_code == 404
    assert error_of(theirs) == error_of(unknown) == "not_found"
    assert app.get(f"/v1/jobs/{job_id}/image").status_code == 401


def test_an_admin_key_reads_any_tenants_image(app: TestClient, settings: Settings) -> None:
    alpha = as_tenant(app, settings, "alpha")
    image = png_bytes(64, 48, seed=9)
    job_id = submit(app, alpha, image, "a.png", "image/png")
    key = make_admin_key(settings)
    resp = app.get(f"/v1/jobs/{job_id}/image", headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200 and resp.content == image


def test_an_image_given_by_reference_is_a_409_that_says_so(
    app: TestClient, settings: Settings,
) -> None:
    alpha = as_tenant(app, settings, "alpha")
    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            job = Job(tenant_id="alpha", model=settings.model, prompt="p", params={},
                      image_url="https://images.example.com/cat.png")
            session.add(job)
            session.commit()
            job_id = job.id
    finally:
        engine.dispose()
    resp = app.get(f"/v1/jobs/{job_id}/image", headers=alpha)
    assert resp.status_code == 409
    assert error_of(resp) == "image_by_reference"
    # The job object itself says where the image is.
    assert app.get(f"/v1/jobs/{job_id}", headers=alpha).json()["image_url"] == (
        "https://images.example.com/cat.png")


def test_an_image_gone_from_the_store_is_a_404_with_its_own_code(
    app: TestClient, settings: Settings, state_root: Path,
) -> None:
    alpha = as_tenant(app, settings, "alpha")
    job_id = submit(app, alpha, png_bytes(64, 48), "a.png", "image/png")
    (state_root / "objects" / "images" / job_id).unlink()
    resp = app.get(f"/v1/jobs/{job_id}/image", headers=alpha)
    assert resp.status_code == 404
    assert error_of(resp) == "image_not_stored"


@pytest.mark.parametrize("job_id", ["not-a-uuid", "9" * 5000, "%00"])
def test_an_id_that_is_not_a_job_id_is_a_4xx(app: TestClient, settings: Settings,
                                               job_id: str) -> None:
    alpha = as_tenant(app, settings, "alpha")
    resp = app.get(f"/v1/jobs/{job_id}/image", headers=alpha)
    assert resp.status_code in (404, 422), resp.text
    assert error_of(resp) in ("not_found", "validation_error")
