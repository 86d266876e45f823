"""Long polls (`GET /v1/jobs/{id}?wait=`) wake on Postgres NOTIFY, hold no thread or
connection while they wait, and work on the embedded SQLite setup too.

No worker runs here: jobs are finished by a direct UPDATE, as a worker's would be.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from shared.timeutil import utcnow
from tests.helpers.images import png_bytes
from tests.helpers.services import fresh_database, start_api
from tests.helpers.stack import Stack

# No worker serves this model (conftest's VLMQ_ACCEPTED_MODELS), so jobs stay queued
# until the test finishes them, even if another module's worker shares the database.
PARKED = "parked"
# Longer than any wait below: a poll that returns terminal was woken by NOTIFY, not by the
# fallback check.
FALLBACK_SECONDS = "60"
HOLDERS = 200

_FINISH = ("UPDATE jobs SET status = 'succeeded', finished_at = now(), result_text = 'done', "
           "prompt_tokens = 1, completion_tokens = 1, finish_reason = 'stop' "
           "WHERE id = ANY(%s) AND status = 'queued'")


@pytest.fixture(scope="module")
def poll_stack(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with fresh_database() as db_url:
        st = stack.with_env(
            database_url=db_url,
            store_url=f"file://{tmp_path_factory.mktemp('poll-objects')}",
            queue_prefix=f"vlmqpoll{uuid.uuid4().hex[:6]}",
            long_poll_fallback_seconds=FALLBACK_SECONDS,
        )
        yield st.migrate()


@pytest.fixture(scope="module")
def poll_api(poll_stack: Stack) -> Iterator[str]:
    svc, base = start_api(poll_stack.env, poll_stack.log_dir, name="api-long-poll")
    yield base
    svc.stop()


def submit(client: httpx.Client, i: int = 0) -> str:
    resp = client.post(
        "/v1/jobs",
        files={"image": ("a.png", png_bytes(64, 48, seed=i), "image/png")},
        data={"prompt": f"job {i}", "max_tokens": "4", "model": PARKED},
    )
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def finish_pg(database_url: str, job_ids: list[str]) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(_FINISH, ([uuid.UUID(j) for j in job_ids],))


def finish_later(finish: object, delay: float, *args: object) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        finish(*args)  # type: ignore[operator]

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_waiting_poll_is_woken_by_notify(poll_stack: Stack, poll_api: str) -> None:
    with httpx.Client(base_url=poll_api, timeout=60, headers=poll_stack.headers) as client:
        job_id = submit(client)
        finisher = finish_later(finish_pg, 1.0, poll_stack.settings.database_url, [job_id])
        started = time.monotonic()
        resp = client.get(f"/v1/jobs/{job_id}", params={"wait": 30})
        waited = time.monotonic() - started
        finisher.join()
    assert resp.status_code == 200, resp.text
    job = resp.json()
    assert job["status"] == "succeeded", job
    assert job["result"]["text"] == "done"
    # Not the read at the end of the wait: the poll was woken well before it.
    assert waited < 20, waited


def test_a_poll_that_times_out_returns_the_job_as_it_stands(poll_stack: Stack, poll_api: str) -> None:
    with httpx.Client(base_url=poll_api, timeout=60, headers=poll_stack.headers) as client:
        job_id = submit(client)
        resp = client.get(f"/v1/jobs/{job_id}", params={"wait": 1})
        missing = client.get(f"/v1/jobs/{uuid.uuid4()}", params={"wait": 30})
    assert resp.status_code == 200
    assert resp.json()["status"] == "queued"
    assert resp.json()["queue_position"] is not None
    assert missing.status_code == 404


def test_many_held_polls_leave_the_api_serving(poll_stack: Stack, poll_api: str) -> None:
    with httpx.Client(base_url=poll_api, timeout=60, headers=poll_stack.headers) as client:
        job_ids = [submit(client, i) for i in range(HOLDERS)]

    async def run() -> tuple[list[httpx.Response], list[httpx.Response], list[httpx.Response]]:
        limits = httpx.Limits(max_connections=HOLDERS + 20, max_keepalive_connections=20)
        async with httpx.AsyncClient(base_url=poll_api, timeout=60, limits=limits,
                                     headers=poll_stack.headers) as aclient:
            polls = [
                asyncio.create_task(aclient.get(f"/v1/jobs/{job_id}", params={"wait": 20}))
                for job_id in job_ids
            ]
            await asyncio.sleep(2)  # let every poll reach its wait
            assert not any(p.done() for p in polls), "a poll returned before its job ended"
            health, submits = [], []
            for i in range(10):
                health.append(await aclient.get("/healthz"))
                submits.append(await aclient.post(
                    "/v1/jobs",
                    files={"image": ("a.png", png_bytes(64, 48, seed=i), "image/png")},
                    data={"prompt": "while held", "max_tokens": "4", "model": PARKED},
                ))
            await asyncio.to_thread(finish_pg, poll_stack.settings.database_url, job_ids)
            return list(await asyncio.gather(*polls)), health, submits

    polls, health, submits = asyncio.run(run())
    assert all(r.status_code == 200 for r in health)
    assert all(r.status_code == 202 for r in submits), [r.text for r in submits]
    statuses = [r.json()["status"] for r in polls]
    assert statuses == ["succeeded"] * HOLDERS


# -- the embedded setup: SQLite has no NOTIFY, one loop checks all waiting ids ------------


@pytest.fixture(scope="module")
def sqlite_api(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path, Stack]]:
    home = tmp_path_factory.mktemp("poll-sqlite")
    db_path = home / "vlmq.db"
    st = stack.with_env(
        database_url=f"sqlite:///{db_path}",
        store_url=f"file://{home / 'objects'}",
        broker_url="filesystem://",
        broker_folder=str(home / "broker"),
        long_poll_fallback_seconds=FALLBACK_SECONDS,
    )
    st.migrate()
    svc, base = start_api(st.env, st.log_dir, name="api-long-poll-sqlite")
    yield base, db_path, st
    svc.stop()


def finish_sqlite(db_path: Path, job_id: str) -> None:
    with sqlite3.connect(db_path, timeout=30) as conn:
        conn.execute(
            "UPDATE jobs SET status = 'succeeded', result_text = 'done', prompt_tokens = 1, "
            "completion_tokens = 1, finish_reason = 'stop', finished_at = ? WHERE id = ?",
            (utcnow().strftime("%Y-%m-%d %H:%M:%S.%f"), uuid.UUID(job_id).hex),
        )


def test_long_poll_on_sqlite(sqlite_api: tuple[str, Path, Stack]) -> None:
    base, db_path, st = sqlite_api
    with httpx.Client(base_url=base, timeout=60, headers=st.headers) as client:
        job_id = submit(client)
        still = client.get(f"/v1/jobs/{job_id}", params={"wait": 0.5})
        finisher = finish_later(finish_sqlite, 1.0, db_path, job_id)
        started = time.monotonic()
        resp = client.get(f"/v1/jobs/{job_id}", params={"wait": 30})
        waited = time.monotonic() - started
        finisher.join()
    assert still.json()["status"] == "queued"
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "succeeded", resp.json()
    assert waited < 20, waited  # woken by the check loop, not the read at the deadline
