"""Retention and deletion against a real API, echo worker and control process, Postgres and
the S3 server: ended jobs past their tenant's retention lose their data and their images,
a job that does not keep its image loses it when it ends, DELETE /v1/jobs/{id}, objects no
row names, `vlmq tenants purge`, and a retention sweeper killed halfway and restarted."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, insert, select, update

from shared.db import make_engine
from shared.jobs.status import JobStatus
from shared.models import Job, StoredFile, Tenant
from shared.retention.sweeper import RetentionSweeper
from shared.storage import make_store
from shared.timeutil import utcnow
from tests.helpers.echo_stack import (
    ENDPOINT,
    EchoStack,
    echo_stack,
    openai_client,
    upload,
    wait_batch,
)
from tests.helpers.echo_stack import batch_line as line
from tests.helpers.images import data_url, png_bytes
from tests.helpers.services import bearer, create_api_key, fresh_database, start_control
from tests.helpers.stack import Stack, db_sessions
from tests.helpers.store import s3_client, store_location

RETENTION = 2  # seconds, for the tenant `tests`
TERMINAL = ("succeeded", "failed", "cancelled", "expired")


@dataclass
class Retention(EchoStack):
    tests: httpx.Client  # retention 2 s (the server's default here)
    keeper: httpx.Client  # retention 0: kept for ever
    dropper: httpx.Client  # kept for ever, but images go when a job ends (tenant setting)
    s3: Any
    bucket: str
    prefix: str

    def object_exists(self, key: str) -> bool:
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}/{key}")
        return any(o["Key"] == f"{self.prefix}/{key}" for o in listed.get("Contents", []))


@pytest.fixture(scope="module")
def ret(stack: Stack) -> Iterator[Retention]:
    bucket, _ = store_location(stack.settings.store_url)
    prefix = f"retention-{uuid.uuid4().hex[:6]}"
    with echo_stack(stack, "retention", retention_seconds=str(RETENTION),
                    retention_sweep_seconds="0.3", retention_chunk="7",
                    tombstone_seconds="3600", orphan_sweep_seconds="0",
                    store_url=f"s3://{bucket}/{prefix}") as echo:
        settings = echo.stack.settings
        keeper_key = create_api_key(settings.database_url, "keeper")
        dropper_key = create_api_key(settings.database_url, "dropper")
        with db_sessions(settings).begin() as session:
            session.execute(update(Tenant).where(Tenant.id.in_(("keeper", "dropper")))
                            .values(retention_seconds=0))
            session.execute(update(Tenant).where(Tenant.id == "dropper")
                            .values(keep_images=False))
        clients = [httpx.Client(base_url=echo.base, headers=bearer(key), timeout=30)
                   for key in (echo.stack.api_key, keeper_key, dropper_key)]
        try:
            yield Retention(**vars(echo), tests=clients[0], keeper=clients[1],
                            dropper=clients[2], s3=s3_client(settings), bucket=bucket,
                            prefix=prefix)
        finally:
            for client in clients:
                client.close()


def submit(client: httpx.Client, model: str, seed: int = 0, **fields: str) -> dict[str, Any]:
    response = client.post("/v1/jobs", files={"image": ("x.png", png_bytes(32, 24, seed))},
                           data={"prompt": f"describe {seed}", "model": model, **fields})
    assert response.status_code == 202, response.text
    return response.json()


def wait_ended(client: httpx.Client, job_id: str) -> dict[str, Any]:
    job = client.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
    assert job["status"] in TERMINAL, job
    return job


def eventually(check: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.2)


def test_ended_jobs_past_retention_lose_their_data_and_the_rest_stays(ret: Retention) -> None:
    due = [submit(ret.tests, ret.model, seed)["id"] for seed in range(20)]
    waiting = submit(ret.tests, ret.parked, 99)["id"]  # queued: no worker serves it
    kept = submit(ret.keeper, ret.model, 7)["id"]
    for job_id in due:
        wait_ended(ret.tests, job_id)
    wait_ended(ret.keeper, kept)

    eventually(lambda: all(ret.tests.get(f"/v1/jobs/{j}").status_code == 410 for j in due),
               what="every ended job answers 410")
    gone = ret.tests.get(f"/v1/jobs/{due[0]}")
    assert gone.json()["error"]["code"] == "expired_data"
    assert ret.tests.get(f"/v1/jobs/{due[0]}/image").status_code == 410
    assert not any(ret.object_exists(f"images/{j}") for j in due)
    listed = {j["id"] for j in ret.tests.get("/v1/jobs", params={"limit": 500}).json()["data"]}
    assert not listed & set(due) and waiting in listed

    with db_sessions(ret.stack.settings)() as session:
        stripped = session.scalars(select(Job).where(Job.id.in_([uuid.UUID(j) for j in due])))
        for row in stripped:
            assert row.purged_at is not None and row.prompt == "" and row.result_text is None
            assert row.image_key is None and row.status == JobStatus.succeeded
    # Still queued after the retention passed: untouched; and the kept tenant's job whole.
    time.sleep(RETENTION)
    still = ret.tests.get(f"/v1/jobs/{waiting}").json()
    assert still["status"] == "queued" and still["prompt"] == "describe 99"
    assert ret.object_exists(f"images/{waiting}")
    whole = ret.keeper.get(f"/v1/jobs/{kept}").json()
    assert whole["result"] is not None and ret.object_exists(f"images/{kept}")


def test_a_batch_and_its_files_past_retention_answer_410_and_leave_the_store(
        ret: Retention) -> None:
    with openai_client(ret.base, ret.stack.api_key) as client:
        image = data_url(png_bytes(16, 16))
        input_id = upload(client, [line(f"l{i}", ret.model, image) for i in range(3)])
        batch = client.batches.create(input_file_id=input_id, endpoint=ENDPOINT,
                                      completion_window="24h")
        done = wait_batch(client, batch.id, {"completed"})
        lines = [uuid.UUID(j["id"]) for j in ret.tests.get(
            "/v1/jobs", params={"batch_id": batch.id}).json()["data"]]
        assert len(lines) == 3 and done.output_file_id is not None
        files = (input_id, done.output_file_id)

        eventually(lambda: ret.tests.get(f"/v1/batches/{batch.id}").status_code == 410
                   and all(ret.tests.get(f"/v1/files/{f}").status_code == 410 for f in files),
                   what="the batch and its files answer 410")
    content = ret.tests.get(f"/v1/files/{done.output_file_id}/content")
    assert content.status_code == 410 and content.json()["error"]["code"] == "expired_data"
    assert not any(ret.object_exists(f"files/{f}") for f in files)
    with db_sessions(ret.stack.settings)() as session:
        stripped = session.scalars(select(Job).where(Job.id.in_(lines))).all()
    assert len(stripped) == 3 and all(j.purged_at is not None and j.result_text is None
                                      for j in stripped)


def test_an_image_not_kept_goes_when_its_job_ends_and_the_job_stays(ret: Retention) -> None:
    dropped = submit(ret.keeper, ret.model, 1, keep_image="false")["id"]
    kept = submit(ret.keeper, ret.model, 2)["id"]
    by_tenant = submit(ret.dropper, ret.model, 3)["id"]  # the tenant keeps no images
    overridden = submit(ret.dropper, ret.model, 4, keep_image="true")["id"]
    for client, job_id in ((ret.keeper, dropped), (ret.keeper, kept),
                           (ret.dropper, by_tenant), (ret.dropper, overridden)):
        wait_ended(client, job_id)
    eventually(lambda: not ret.object_exists(f"images/{dropped}")
               and not ret.object_exists(f"images/{by_tenant}"), what="images removed")

    job = ret.keeper.get(f"/v1/jobs/{dropped}").json()
    assert job["keep_image"] is False and job["image"]["stored"] is False
    assert job["result"] is not None and job["prompt"] == "describe 1"
    image = ret.keeper.get(f"/v1/jobs/{dropped}/image")
    assert image.status_code == 410 and image.json()["error"]["code"] == "expired_data"
    assert ret.dropper.get(f"/v1/jobs/{by_tenant}").json()["keep_image"] is False
    for client, job_id in ((ret.keeper, kept), (ret.dropper, overridden)):
        assert ret.object_exists(f"images/{job_id}")
        assert client.get(f"/v1/jobs/{job_id}/image").status_code == 200


def test_delete_removes_an_ended_job_and_refuses_a_queued_one(ret: Retention) -> None:
    ended = submit(ret.keeper, ret.model, 11)["id"]
    wait_ended(ret.keeper, ended)
    queued = submit(ret.keeper, ret.parked, 12)["id"]

    assert ret.tests.delete(f"/v1/jobs/{ended}").status_code == 404  # another tenant's
    assert ret.keeper.get(f"/v1/jobs/{ended}").status_code == 200
    refused = ret.keeper.delete(f"/v1/jobs/{queued}")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "job_not_finished"
    assert ret.keeper.get(f"/v1/jobs/{queued}").json()["status"] == "queued"

    deleted = ret.keeper.delete(f"/v1/jobs/{ended}")
    assert deleted.status_code == 200 and deleted.json() == {
        "id": ended, "object": "job", "deleted": True}
    assert ret.keeper.get(f"/v1/jobs/{ended}").status_code == 410
    assert not ret.object_exists(f"images/{ended}")
    assert ret.keeper.delete(f"/v1/jobs/{ended}").status_code == 200  # again: no error
    assert ret.keeper.delete(f"/v1/jobs/{uuid.uuid4()}").status_code == 404
    assert ret.keeper.delete("/v1/jobs/not-an-id").status_code == 422

    ret.keeper.post(f"/v1/jobs/{queued}/cancel").raise_for_status()
    assert ret.keeper.delete(f"/v1/jobs/{queued}").status_code == 200


def test_objects_no_row_names_are_removed_once_past_the_safety_window(ret: Retention) -> None:
    settings = ret.stack.settings.model_copy(update={"orphan_min_age_seconds": 1.0})
    store = make_store(settings)
    named = submit(ret.keeper, ret.model, 21)["id"]
    wait_ended(ret.keeper, named)
    stray_image, stray_file = f"images/{uuid.uuid4()}", "files/file-0123456789abcdef01234567"
    not_ours = "images/notes.txt"
    for key in (stray_image, stray_file, not_ours):
        store.put(key, b"x", "application/octet-stream")
    time.sleep(1.5)
    fresh = f"images/{uuid.uuid4()}"  # an upload whose insert may still come
    store.put(fresh, b"x", "application/octet-stream")

    engine = make_engine(settings)
    try:
        swept = RetentionSweeper(engine, db_sessions(settings), store,
                                 settings).sweep(orphans_now=True)
    finally:
        engine.dispose()

    assert swept.orphans >= 2
    assert not ret.object_exists(stray_image) and not ret.object_exists(stray_file)
    for key in (f"images/{named}", not_ours, fresh):
        assert ret.object_exists(key), key


def test_purging_a_tenant_removes_all_of_it_and_nothing_of_another(ret: Retention) -> None:
    db_url = ret.stack.settings.database_url
    clients = {name: httpx.Client(base_url=ret.base, timeout=30,
                                  headers=bearer(create_api_key(db_url, name)))
               for name in ("purge-a", "purge-b")}
    with db_sessions(ret.stack.settings).begin() as session:
        session.execute(update(Tenant).where(Tenant.id.in_(list(clients)))
                        .values(retention_seconds=0))
    jobs: dict[str, list[str]] = {}
    files: dict[str, str] = {}
    for name, client in clients.items():
        jobs[name] = [submit(client, ret.model, seed)["id"] for seed in range(4)]
        for job_id in jobs[name]:
            wait_ended(client, job_id)
        jobs[name].append(submit(client, ret.parked, 9)["id"])  # queued: cancelled by a purge
        uploaded = client.post("/v1/files", files={"file": ("in.jsonl", b"{}\n")},
                               data={"purpose": "batch"})
        files[name] = uploaded.json()["id"]

    dry = _vlmq(ret, "tenants", "purge", "purge-a", "--dry-run")
    assert "jobs        5 (1 queued or running" in dry.stderr and "files       1" in dry.stderr
    assert clients["purge-a"].get(f"/v1/jobs/{jobs['purge-a'][0]}").status_code == 200
    refused = _vlmq(ret, "tenants", "purge", "purge-a", check=False)  # no --yes, no terminal
    assert refused.returncode != 0
    assert _vlmq(ret, "tenants", "purge", "no-such-tenant", "--yes", check=False).returncode

    _vlmq(ret, "tenants", "purge", "purge-a", "--yes")

    a, b = clients["purge-a"], clients["purge-b"]
    for job_id in jobs["purge-a"]:
        assert a.get(f"/v1/jobs/{job_id}").status_code == 404
        assert not ret.object_exists(f"images/{job_id}")
    assert a.get(f"/v1/files/{files['purge-a']}").status_code == 404
    assert not ret.object_exists(f"files/{files['purge-a']}")
    for job_id in jobs["purge-b"]:
        assert b.get(f"/v1/jobs/{job_id}").status_code == 200
        assert ret.object_exists(f"images/{job_id}")
    assert b.get(f"/v1/files/{files['purge-b']}/content").content == b"{}\n"
    with db_sessions(ret.stack.settings)() as session:
        assert session.scalar(select(func.count()).select_from(Job)
                              .where(Job.tenant_id == "purge-a")) == 0
        assert session.scalar(select(func.count()).select_from(StoredFile)
                              .where(StoredFile.tenant_id == "purge-a")) == 0
    for client in clients.values():
        client.close()


def _vlmq(ret: Retention, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "shared.cli", *args], env=ret.stack.env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if check:
        assert done.returncode == 0, done.stderr
    return done


# -- killed halfway ----------------------------------------------------------------------

DUE, QUEUED, FOREVER = 600, 40, 40


def test_a_sweeper_killed_halfway_leaves_nothing_behind_and_removes_nothing_more(
        stack: Stack) -> None:
    bucket, _ = store_location(stack.settings.store_url)
    with fresh_database() as db_url:
        st = stack.with_env(database_url=db_url,
                            store_url=f"s3://{bucket}/kill-{uuid.uuid4().hex[:6]}",
                            retention_seconds="60", retention_chunk="10",
                            retention_sweep_seconds="0.2", orphan_sweep_seconds="0").migrate()
        create_api_key(db_url, "forever")
        sessions = db_sessions(st.settings)
        with sessions.begin() as session:
            session.execute(update(Tenant).where(Tenant.id == "forever")
                            .values(retention_seconds=0))
        due = _seed(st, "tests", DUE, ended=True)
        queued = _seed(st, "tests", QUEUED, ended=False)
        forever = _seed(st, "forever", FOREVER, ended=True)

        def purged() -> int:
            with sessions() as session:
                return session.scalar(select(func.count()).select_from(Job)
                                      .where(Job.purged_at.is_not(None))) or 0

        control = start_control(st.env, st.log_dir, name="control-retention-kill")
        try:
            eventually(lambda: purged() > 0, timeout=60, what="the sweeper started")
            control.kill()
        except BaseException:
            control.stop()
            raise
        halfway = purged()
        assert 0 < halfway < DUE, f"{halfway} of {DUE} purged when killed"

        control = start_control(st.env, st.log_dir, name="control-retention-restart")
        try:
            eventually(lambda: purged() == DUE, timeout=120, what="every due job purged")
        finally:
            control.stop()

        store = make_store(st.settings)
        left = {o.key for page in store.list_pages("images/", 1000) for o in page}
        assert left == {f"images/{j}" for j in queued + forever}, "objects left behind"
        with sessions() as session:
            assert set(session.scalars(select(Job.id).where(Job.purged_at.is_not(None)))) \
                == set(due)
            intact = session.scalar(select(func.count()).select_from(Job).where(
                Job.id.in_(queued + forever), Job.purged_at.is_(None), Job.prompt != ""))
        assert intact == QUEUED + FOREVER


def _seed(st: Stack, tenant: str, n: int, *, ended: bool) -> list[uuid.UUID]:
    """`n` jobs written as the API and a worker would have, their images in the store."""
    store = make_store(st.settings)
    ids = [uuid.uuid4() for _ in range(n)]
    image = png_bytes(8, 8)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: store.put(f"images/{i}", image, "image/png"), ids))
    past = utcnow() - timedelta(hours=1)
    rows = [dict(
        id=i, tenant_id=tenant, model="m", prompt="p", params={}, image_key=f"images/{i}",
        status=JobStatus.succeeded if ended else JobStatus.queued, attempts=1 if ended else 0,
        created_at=past, finished_at=past if ended else None,
        result_text="r" if ended else None) for i in ids]
    with db_sessions(st.settings).begin() as session:
        session.execute(insert(Job), rows)
    return ids
