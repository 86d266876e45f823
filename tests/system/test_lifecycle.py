"""Client control of jobs: long poll, cancel, queue deadlines, idempotency and priority."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import func, select, update

from shared.jobs import transitions as jobs_transitions
from shared.models import Job
from tests.helpers.images import png_bytes
from tests.helpers.services import Service, start_worker, wait_terminal
from tests.helpers.stack import Stack, db_sessions


def submit(client: httpx.Client, model: str = "parked", seed: int = 0,
           headers: dict[str, str] | None = None, **fields: str) -> httpx.Response:
    return client.post(
        "/v1/jobs",
        files={"image": ("a.png", png_bytes(112, 84, seed=seed), "image/png")},
        data={"prompt": "What is this?", "model": model, "max_tokens": "4", **fields},
        headers=headers or {},
    )


def created(resp: httpx.Response) -> dict:
    assert resp.status_code == 202, resp.text
    return resp.json()


def test_long_poll_returns_once_the_job_is_done(client: httpx.Client, worker: Service) -> None:
    job = created(submit(client, model="tiny-qwen2-vl"))
    polled = client.get(f"/v1/jobs/{job['id']}", params={"wait": 60}, timeout=90).json()
    assert polled["status"] == "succeeded"


def test_long_poll_gives_the_current_status_when_time_runs_out(client: httpx.Client) -> None:
    job = created(submit(client))
    start = time.monotonic()
    polled = client.get(f"/v1/jobs/{job['id']}", params={"wait": 1}).json()
    assert polled["status"] == "queued"
    assert time.monotonic() - start >= 1.0
    assert client.get(f"/v1/jobs/{job['id']}", params={"wait": -1}).status_code == 422


def test_cancel_a_queued_job(client: httpx.Client) -> None:
    job = created(submit(client))
    resp = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "cancelled"
    assert resp.json()["finished_at"]
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"

    again = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "job_finished"
    missing = client.post(f"/v1/jobs/{uuid.uuid4()}/cancel")
    assert missing.status_code == 404


def test_cancelling_a_finished_job_is_a_conflict(client: httpx.Client, worker: Service) -> None:
    job = wait_terminal(client, created(submit(client, model="tiny-qwen2-vl"))["id"])
    assert job["status"] == "succeeded"
    resp = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 409
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"


def test_a_job_not_started_in_time_expires_and_never_runs(
    client: httpx.Client, stack: Stack, worker: Service
) -> None:
    model = f"late-{uuid.uuid4().hex[:6]}"
    shown = created(submit(client, model="parked", max_queue_seconds="1"))
    assert shown["expires_at"]
    with db_sessions(stack.settings)() as session:
        session.execute(update(Job).where(Job.id == uuid.UUID(shown["id"])).values(model=model))
        session.commit()
    time.sleep(1.2)

    # A worker that looks after the deadline does not claim the job ...
    with db_sessions(stack.settings)() as session:
        assert jobs_transitions.claim_batch(session, model, 10, lease_seconds=30) == []
        session.rollback()
    # ... and the sweeper (in the running worker) expires it, whoever reads it or not.
    deadline = time.monotonic() + 30
    while (job := client.get(f"/v1/jobs/{shown['id']}").json())["status"] == "queued":
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job["status"] == "expired"
    assert job["error"]["code"] == "expired"
    assert job["attempts"] == 0


def test_idempotency_key_returns_the_original_job(client: httpx.Client, stack: Stack) -> None:
    key = f"order-{uuid.uuid4()}"
    first = created(submit(client, headers={"Idempotency-Key": key}))
    again = submit(client, headers={"Idempotency-Key": key})
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first["id"]

    other = submit(client, seed=5, headers={"Idempotency-Key": key})
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    with db_sessions(stack.settings)() as session:
        rows = session.scalar(select(func.count()).where(Job.idempotency_key == key))
    assert rows == 1

    bad = submit(client, headers={"Idempotency-Key": "x" * 201})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_idempotency_key"


@pytest.mark.parametrize("fields", [{"priority": "10"}, {"priority": "-1"},
                                    {"max_queue_seconds": "0"}])
def test_out_of_range_scheduling_fields_are_refused(client: httpx.Client, fields: dict) -> None:
    resp = submit(client, **fields)
    assert resp.status_code == 422
    assert resp.json()["error"]["code"] == "validation_error"


@pytest.fixture()
def prio_worker(stack: Stack) -> Iterator[Stack]:
    """A one-slot worker for model `prio`, started only after its backlog is queued."""
    yield stack.with_env(model="prio", max_batch_size="1", max_in_flight="1")


def test_priority_zero_overtakes_a_backlog(client: httpx.Client, prio_worker: Stack) -> None:
    backlog = [created(submit(client, model="prio", seed=i, priority="9"))["id"]
               for i in range(8)]
    urgent = created(submit(client, model="prio", seed=99, priority="0"))["id"]
    assert client.get(f"/v1/jobs/{urgent}").json()["priority"] == 0

    worker = start_worker(prio_worker.env, prio_worker.log_dir, name="worker-prio")
    try:
        jobs = {i: wait_terminal(client, i) for i in [*backlog, urgent]}
    finally:
        worker.stop()
    assert all(j["status"] == "succeeded" for j in jobs.values())
    order = sorted(jobs, key=lambda i: jobs[i]["started_at"])
    rank = order.index(urgent)
    print(f"priority-0 job started {rank + 1} of {len(order)}")
    # Claims come from Postgres in priority order, whatever order the messages are in.
    assert rank == 0, order


def test_queued_jobs_show_their_place_in_the_queue(client: httpx.Client) -> None:
    first = created(submit(client, priority="3"))["id"]
    second = created(submit(client, seed=1, priority="3"))["id"]
    urgent = created(submit(client, seed=2, priority="2"))["id"]
    try:
        places = {i: client.get(f"/v1/jobs/{i}").json() for i in (first, second, urgent)}
        assert [places[i]["queue_position"] for i in (urgent, first, second)] == [0, 1, 2]
        # No job of this model has finished yet, so there is no throughput to estimate from.
        assert all(p["eta_seconds"] is None for p in places.values())
    finally:
        for i in (first, second, urgent):
            client.post(f"/v1/jobs/{i}/cancel")
    assert client.get(f"/v1/jobs/{first}").json()["queue_position"] is None


def test_prompt_longer_than_the_model_allows_fails_at_once(
    client: httpx.Client, worker: Service
) -> None:
    # Under the API's character limit, over the model's 2048-token context.
    long_prompt = " ".join(f"word{i}" for i in range(1500))
    resp = client.post(
        "/v1/jobs",
        files={"image": ("a.png", png_bytes(112, 84), "image/png")},
        data={"prompt": long_prompt, "max_tokens": "4"},
    )
    job = wait_terminal(client, created(resp)["id"])
    assert job["status"] == "failed"
    assert job["error"]["code"] == "prompt_too_long"
    assert job["attempts"] == 1  # permanent: not retried
