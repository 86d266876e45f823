"""Workers killed with SIGKILL mid-batch lose no job: every accepted job ends in exactly one
terminal state with one result, and re-executions are counted."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis
from sqlalchemy import select

from shared.db import make_engine, make_session_factory
from shared.migrate import upgrade_head
from shared.models import Job
from tests.conftest import Stack, png_bytes
from tests.services import REDIS_URL, Service, fresh_database, start_api, start_worker

JOBS = 320
KILLS = 3


@pytest.fixture(scope="module")
def fault_stack(stack: Stack) -> Iterator[Stack]:
    """Own database and queues, and short timings so recovery is quick enough for a test."""
    # Kombu keeps one unacked-message index per Redis database, shared by every stack on it;
    # a database of its own keeps earlier tests' brokers out of this recovery test.
    broker = REDIS_URL.rsplit("/", 1)[0] + "/7"
    redis.Redis.from_url(broker).flushdb()
    with fresh_database() as db_url:
        st = stack.with_env(database_url=db_url, broker_url=broker)
        upgrade_head(st.settings)
        yield _with_fault_timings(st)


def _with_fault_timings(stack: Stack) -> Stack:
    return stack.with_env(
        queue_prefix=f"vlmqfault{uuid.uuid4().hex[:6]}",
        max_batch_size="16",
        lease_seconds="3",
        heartbeat_seconds="1",
        visibility_timeout_seconds="8",
        max_attempts=str(KILLS + 3),
        retry_backoff_seconds="0.2",
    )


@pytest.fixture(scope="module")
def fault_api(fault_stack: Stack) -> Iterator[str]:
    svc, base = start_api(fault_stack.env, fault_stack.log_dir, name="api-fault")
    yield base
    svc.stop()


def counts(stack: Stack, ids: list[uuid.UUID]) -> dict[str, int]:
    with make_session_factory(make_engine(stack.settings))() as session:
        rows = session.scalars(select(Job.status).where(Job.id.in_(ids))).all()
    out: dict[str, int] = {}
    for status in rows:
        out[str(status)] = out.get(str(status), 0) + 1
    return out


def test_killing_workers_mid_batch_loses_no_job(fault_stack: Stack, fault_api: str) -> None:
    def submit(i: int) -> uuid.UUID:
        with httpx.Client(base_url=fault_api, timeout=30) as client:
            resp = client.post(
                "/v1/jobs",
                files={"image": ("a.png", png_bytes(112, 84, seed=i), "image/png")},
                data={"prompt": f"job {i}", "max_tokens": "4"},
            )
            assert resp.status_code == 202, resp.text
            return uuid.UUID(resp.json()["id"])

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(submit, range(JOBS)))
    assert counts(fault_stack, ids) == {"queued": JOBS}  # all in flight before the first kill

    workers: list[Service] = [start_worker(fault_stack.env, fault_stack.log_dir, "worker-fault-0")]
    try:
        for kill in range(1, KILLS + 1):
            target = len(ids) * kill // (KILLS + 2)
            deadline = time.monotonic() + 120
            while counts(fault_stack, ids).get("succeeded", 0) < target:
                assert time.monotonic() < deadline, counts(fault_stack, ids)
                time.sleep(0.05)
            running = counts(fault_stack, ids).get("running", 0)
            workers[-1].kill()
            print(f"kill {kill}: SIGKILL with {running} jobs running")
            workers.append(
                start_worker(fault_stack.env, fault_stack.log_dir, f"worker-fault-{kill}")
            )

        deadline = time.monotonic() + 120
        while (c := counts(fault_stack, ids)).get("succeeded", 0) + c.get("failed", 0) < JOBS:
            assert time.monotonic() < deadline, f"jobs still not terminal: {c}"
            time.sleep(0.2)
    finally:
        workers[-1].stop()

    with make_session_factory(make_engine(fault_stack.settings))() as session:
        rows = session.scalars(select(Job).where(Job.id.in_(ids))).all()
    assert len(rows) == JOBS
    lost = [r.id for r in rows if r.status not in ("succeeded", "failed")]
    assert not lost, f"{len(lost)} jobs lost"
    assert all(r.status == "succeeded" for r in rows), {r.error_code for r in rows}
    assert all(r.result_text is not None and r.finished_at for r in rows)
    reruns = sum(r.attempts - 1 for r in rows)
    print(f"{JOBS} jobs, {KILLS} SIGKILLs: 0 lost, {sum(r.attempts > 1 for r in rows)} jobs "
          f"executed more than once ({reruns} extra executions)")
    assert reruns >= 1, "a kill mid-batch should have interrupted at least one job"
