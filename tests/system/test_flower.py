"""`vlmq flower` must come up on the real Redis broker, since docker-compose runs it that way,
and behind the basic auth compose gives it; and on the embedded folder broker, the default.
On Redis its task list shows every job, with its outcome."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, update

from shared.models import Job
from tests.helpers.images import png_bytes
from tests.helpers.net import non_loopback_address, reachable
from tests.helpers.services import (
    REDIS_URL,
    Service,
    free_port,
    start_api,
    start_worker,
    wait_http,
    wait_terminal,
)
from tests.helpers.stack import Stack

AUTH = ("admin", "flower-test-password")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMQ_")}
    env["VLMQ_BROKER_URL"] = REDIS_URL
    return env


@pytest.fixture()
def flower(tmp_path: Path) -> Iterator[tuple[Service, str]]:
    env = _env()
    env["VLMQ_FLOWER_BASIC_AUTH"] = f'["{AUTH[0]}:{AUTH[1]}"]'
    port = free_port()
    # Listens where the API does (VLMQ_API_HOST, loopback by default), not on every interface.
    svc = Service("flower", ["flower", "--port", str(port)], env, tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthcheck", svc.proc, timeout=60)
        yield svc, base
    finally:
        svc.stop()


def test_flower_serves_dashboard_and_healthcheck(flower: tuple[Service, str]) -> None:
    svc, base = flower
    health = httpx.get(f"{base}/healthcheck", timeout=10)
    assert health.status_code == 200, svc.log_text()[-2000:]
    assert health.text == "OK"
    page = httpx.get(f"{base}/", auth=AUTH, timeout=30)
    assert page.status_code == 200, svc.log_text()[-2000:]
    assert "Flower" in page.text
    assert "127.0.0.1:6379/0" in svc.log_text()  # the broker came from VLMQ_BROKER_URL
    # Where the API listens (loopback by default), not on every interface.
    address = non_loopback_address()
    if address is not None:
        assert not reachable(address, int(base.rsplit(":", 1)[1]))


def test_flower_dashboard_needs_the_configured_credentials(flower: tuple[Service, str]) -> None:
    _, base = flower
    assert httpx.get(f"{base}/", timeout=30).status_code == 401
    assert httpx.get(f"{base}/", auth=(AUTH[0], "wrong"), timeout=30).status_code == 401
    assert httpx.get(f"{base}/api/workers", timeout=30).status_code == 401
    # Flower itself serves its metrics (every worker and task name) to anyone.
    assert httpx.get(f"{base}/metrics", timeout=30).status_code == 401
    assert httpx.get(f"{base}/metrics", auth=(AUTH[0], "wrong"), timeout=30).status_code == 401
    metrics = httpx.get(f"{base}/metrics", auth=AUTH, timeout=30)
    assert metrics.status_code == 200 and "flower_" in metrics.text


def test_flower_refuses_to_start_without_credentials() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shared.cli", "flower", "--port", str(free_port())],
        env=_env(), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert "VLMQ_FLOWER_BASIC_AUTH" in proc.stderr and "--no-auth" in proc.stderr


def test_flower_stops_on_terminate(flower: tuple[Service, str]) -> None:
    svc, _ = flower
    svc.proc.terminate()
    assert svc.proc.wait(timeout=30) is not None


def _folder_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMQ_")}
    env["VLMQ_HOME"] = str(work)
    env["VLMQ_BROKER_URL"] = "filesystem://"
    # Relative, as a user in their own folder writes it: resolved against Flower's folder.
    env["VLMQ_BROKER_FOLDER"] = "broker"
    env["VLMQ_FLOWER_BASIC_AUTH"] = f'["{AUTH[0]}:{AUTH[1]}"]'
    return env


def _start_folder_flower(work: Path, name: str) -> tuple[Service, str]:
    port = free_port()
    svc = Service(name, ["flower", "--port", str(port)], _folder_env(work), work, cwd=work)
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/healthcheck", svc.proc, timeout=60)
    return svc, base


def _event_queues(work: Path) -> list[str]:
    table = work / "broker" / "control" / "celeryev.exchange"
    if not table.exists():
        return []
    return [queue for _, _, queue in json.loads(table.read_text())]


def test_flower_serves_on_the_folder_broker(tmp_path: Path) -> None:
    """The embedded default: Flower reads the same folder as the API and workers and captures
    events from it, instead of looking for ./data_in every second."""
    svc, base = _start_folder_flower(tmp_path, "flower-folder")
    try:
        for page in ("/", "/workers", "/tasks", "/api/workers", "/api/tasks"):
            response = httpx.get(f"{base}{page}", auth=AUTH, timeout=30)
            assert response.status_code == 200, (page, svc.log_text()[-2000:])
        assert httpx.get(f"{base}/", timeout=30).status_code == 401
        time.sleep(4)  # event capture retries every second or so when it fails
        log = svc.log_text()
        assert "Failed to capture events" not in log and "data_in" not in log, log[-2000:]
        assert "Broker: filesystem://" in log
        # Its event queue lives in the configured folder, not ./data_in or ./control.
        assert any(q.startswith("celeryev.flower-") for q in _event_queues(tmp_path))
        assert not (tmp_path / "data_in").exists() and not (tmp_path / "control").exists()
    finally:
        svc.stop()
    # The folder broker never expires a queue: one left bound would collect every later
    # event as a file nobody reads.
    assert _event_queues(tmp_path) == []


def test_flower_drops_the_event_queue_a_killed_flower_left(tmp_path: Path) -> None:
    killed, _ = _start_folder_flower(tmp_path, "flower-killed")
    deadline = time.monotonic() + 30
    while not _event_queues(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _event_queues(tmp_path)
    assert len(left) == 1
    killed.kill()
    assert _event_queues(tmp_path) == left  # a SIGKILL leaves it behind
    svc, _ = _start_folder_flower(tmp_path, "flower-next")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            queues = _event_queues(tmp_path)
            if left[0] not in queues and len(queues) == 1:
                break
            time.sleep(0.2)
        assert left[0] not in queues and len(queues) == 1, queues
    finally:
        svc.stop()


MODEL = "flower-echo"


def _tasks(base: str) -> dict[str, dict[str, Any]]:
    response = httpx.get(f"{base}/api/tasks", auth=AUTH, timeout=30)
    response.raise_for_status()
    return response.json()


def _submit(client: httpx.Client, seed: int, prompt: str = "Describe this image.") -> str:
    response = client.post("/v1/jobs", files={"image": ("p.png", png_bytes(64, 48, seed=seed),
                                                        "image/png")},
                           data={"prompt": prompt, "model": MODEL, "max_tokens": "8"})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _seen_in_flower(base: str, ids: set[str], states: dict[str, str],
                    timeout: float) -> dict[str, dict[str, Any]]:
    """Flower's tasks for `ids` once each is in the state `states` names (SUCCESS by default)."""
    deadline = time.monotonic() + timeout
    while True:
        tasks = _tasks(base)
        if all(tasks.get(i, {}).get("state") == states.get(i, "SUCCESS") for i in ids):
            return tasks
        if time.monotonic() > deadline:
            return tasks
        time.sleep(0.3)


def _run_jobs(base: str, st: Stack, db_engine: Engine, flower_base: str
              ) -> tuple[list[str], str, str, dict[str, dict[str, Any]]]:
    """Thirty jobs that succeed, one cancelled while queued, one that fails for good."""
    with httpx.Client(base_url=base, timeout=30, headers=st.headers) as client:
        worker = start_worker(st.env, st.log_dir, name=f"worker-{MODEL}")
        try:
            # Flower subscribes to events a moment after it answers: wait until a job shows.
            deadline = time.monotonic() + 60
            while True:
                probe = _submit(client, seed=0)
                wait_terminal(client, probe)
                if probe in _seen_in_flower(flower_base, {probe}, {}, timeout=3):
                    break
                assert time.monotonic() < deadline, "Flower never showed a job"
            # The backlog Flower's broker page cannot show (it counts wake-ups) is here.
            served = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
            assert (served[MODEL]["queued"], served[MODEL]["running"]) == (0, 0)
            assert served[MODEL]["oldest_queued_seconds"] is None
        finally:
            worker.stop()

        # Queued while no worker runs: one to be cancelled, one whose stored image no longer
        # matches its hash (a permanent failure), and thirty that succeed.
        ids = [_submit(client, seed=i) for i in range(1, 31)]
        cancelled = _submit(client, seed=31)
        broken = _submit(client, seed=32)
        assert client.post(f"/v1/jobs/{cancelled}/cancel").status_code == 200
        with db_engine.begin() as conn:
            conn.execute(update(Job).where(Job.id == uuid.UUID(broken))
                         .values(image_sha256="0" * 64))
        worker = start_worker(st.env, st.log_dir, name=f"worker-{MODEL}-2")
        try:
            for job_id in [*ids, broken]:
                wait_terminal(client, job_id)
            jobs = {job_id: client.get(f"/v1/jobs/{job_id}").json() for job_id in ids}
        finally:
            worker.stop()
    return ids, cancelled, broken, jobs


def test_flower_lists_every_job_with_its_outcome(
    flower: tuple[Service, str], stack: Stack, db_engine: Engine
) -> None:
    """Jobs are claimed in bulk from Postgres, not consumed as Celery tasks: the worker and
    the API (a cancel) send task events for them, and Flower shows each job."""
    _, flower_base = flower
    # The model stays accepted while no worker serves it, so jobs can wait for the next one.
    st = stack.with_env(model=MODEL, engine="echo", accepted_models=json.dumps([MODEL]))
    api, base = start_api(st.env, st.log_dir, name="api-flower")
    try:
        ids, cancelled, broken, jobs = _run_jobs(base, st, db_engine, flower_base)
    finally:
        api.stop()

    states = {cancelled: "REVOKED", broken: "FAILURE"}
    tasks = _seen_in_flower(flower_base, {*ids, cancelled, broken}, states, timeout=30)
    for job_id in ids:
        task = tasks.get(job_id)
        assert task is not None, f"Flower does not show job {job_id}"
        assert task["state"] == "SUCCESS", task
        assert task["name"] == f"vlmq.job.{MODEL}"
        assert task["worker"].startswith(f"vlmq-{MODEL}@"), task
        assert "Describe this image." in task["args"] and "64x48" in task["kwargs"]
        assert "'tenant': 'tests'" in task["kwargs"]
        job = jobs[job_id]
        engine_seconds = (datetime.fromisoformat(job["finished_at"])
                          - datetime.fromisoformat(job["started_at"])).total_seconds()
        assert task["runtime"] == pytest.approx(engine_seconds, abs=0.01)
        assert task["received"] and task["started"] and task["succeeded"]

    assert tasks[cancelled]["state"] == "REVOKED", tasks.get(cancelled)
    assert tasks[cancelled]["name"] == f"vlmq.job.{MODEL}"
    info = httpx.get(f"{flower_base}/api/task/info/{broken}", auth=AUTH, timeout=30)
    assert info.status_code == 200, info.text
    failed = info.json()
    assert failed["state"] == "FAILURE" and failed["name"] == f"vlmq.job.{MODEL}"
    assert "image_corrupted" in failed["exception"], failed
