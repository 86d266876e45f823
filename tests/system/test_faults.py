"""Faults during a run lose no job: workers killed with SIGKILL mid-batch, the broker
restarted without persistence, the API restarted. Afterwards every accepted job is in exactly
one terminal state with one result; re-executions are counted and printed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select

from shared.models import Job
from tests.helpers.services import (
    PG_ADMIN_URL,
    RedisServer,
    Service,
    fresh_database,
    start_api,
    start_worker,
)
from tests.helpers.stack import Stack, db_sessions, submit_many

KILLS = 3


@pytest.fixture(scope="module")
def broker(log_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(log_dir)
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def fault_stack(stack: Stack, broker: RedisServer) -> Iterator[Stack]:
    """Own database, broker and queues, and short timings so recovery fits in a test."""
    with fresh_database() as db_url:
        st = stack.with_env(
            database_url=db_url,
            broker_url=broker.url,
            queue_prefix=f"vlmqfault{uuid.uuid4().hex[:6]}",
            max_batch_size="16",
            lease_seconds="3",
            heartbeat_seconds="1",
            visibility_timeout_seconds="8",
            max_attempts=str(KILLS + 3),
            retry_backoff_seconds="0.2",
        )
        yield st.migrate()


@pytest.fixture(scope="module")
def fault_api(fault_stack: Stack) -> Iterator[Service]:
    svc, base = start_api(fault_stack.env, fault_stack.log_dir, name="api-fault")
    svc.base = base  # type: ignore[attr-defined]
    yield svc
    svc.stop()


def base_url(api: Service) -> str:
    return api.base  # type: ignore[attr-defined,no-any-return]


def counts(stack: Stack, ids: list[uuid.UUID]) -> dict[str, int]:
    with db_sessions(stack.settings)() as session:
        rows = session.scalars(select(Job.status).where(Job.id.in_(ids))).all()
    out: dict[str, int] = {}
    for status in rows:
        out[str(status)] = out.get(str(status), 0) + 1
    return out


def wait_succeeded(stack: Stack, ids: list[uuid.UUID], at_least: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (c := counts(stack, ids)).get("succeeded", 0) + c.get("failed", 0) < at_least:
        assert time.monotonic() < deadline, f"jobs still not terminal: {c}"
        time.sleep(0.1)


def assert_none_lost(stack: Stack, ids: list[uuid.UUID], label: str) -> None:
    with db_sessions(stack.settings)() as session:
        rows = session.scalars(select(Job).where(Job.id.in_(ids))).all()
    assert len(rows) == len(ids)
    lost = [r.id for r in rows if r.status not in ("succeeded", "failed")]
    assert not lost, f"{len(lost)} jobs lost"
    assert all(r.status == "succeeded" for r in rows), {r.error_code for r in rows}
    assert all(r.result_text is not None and r.finished_at for r in rows)
    reruns = sum(r.attempts - 1 for r in rows)
    print(f"{label}: {len(ids)} jobs, 0 lost, {sum(r.attempts > 1 for r in rows)} executed "
          f"more than once ({reruns} extra executions)")


def test_killing_workers_mid_batch_loses_no_job(fault_stack: Stack, fault_api: Service) -> None:
    ids = submit_many(base_url(fault_api), 0, 320, fault_stack.api_key)
    assert counts(fault_stack, ids) == {"queued": 320}  # all in flight before the first kill

    workers = [start_worker(fault_stack.env, fault_stack.log_dir, "worker-fault-0")]
    try:
        for kill in range(1, KILLS + 1):
            wait_succeeded(fault_stack, ids, len(ids) * kill // (KILLS + 2), timeout=120)
            running = counts(fault_stack, ids).get("running", 0)
            workers[-1].kill()
            print(f"kill {kill}: SIGKILL with {running} jobs running")
            workers.append(
                start_worker(fault_stack.env, fault_stack.log_dir, f"worker-fault-{kill}")
            )
        wait_succeeded(fault_stack, ids, len(ids), timeout=120)
    finally:
        workers[-1].stop()
    assert_none_lost(fault_stack, ids, f"{KILLS} worker SIGKILLs")


def test_broker_restart_without_persistence_loses_no_job(
    fault_stack: Stack, fault_api: Service, broker: RedisServer
) -> None:
    ids = submit_many(base_url(fault_api), 1000, 160, fault_stack.api_key)
    worker = start_worker(fault_stack.env, fault_stack.log_dir, "worker-fault-redis")
    try:
        wait_succeeded(fault_stack, ids, 30, timeout=120)
        broker.kill()  # every queued and unacknowledged message is gone with it
        print(f"redis killed with {counts(fault_stack, ids)}")
        time.sleep(1)
        broker.start()
        # Jobs whose messages were lost are sent again from Postgres.
        wait_succeeded(fault_stack, ids, len(ids), timeout=150)
    finally:
        worker.stop()
    assert_none_lost(fault_stack, ids, "Redis restart")


def test_api_restart_during_a_run_loses_no_job(fault_stack: Stack) -> None:
    worker = start_worker(fault_stack.env, fault_stack.log_dir, "worker-fault-api")
    first, first_base = start_api(fault_stack.env, fault_stack.log_dir, name="api-fault-1")
    try:
        before = submit_many(first_base, 2000, 60, fault_stack.api_key)
        first.kill()
        second, base = start_api(fault_stack.env, fault_stack.log_dir, name="api-fault-2")
        try:
            after = submit_many(base, 3000, 60, fault_stack.api_key)
            wait_succeeded(fault_stack, before + after, 120, timeout=120)
        finally:
            second.stop()
    finally:
        first.stop()
        worker.stop()
    assert_none_lost(fault_stack, before + after, "API restart")


def test_dropped_database_connections_lose_no_job(fault_stack: Stack, fault_api: Service) -> None:
    ids = submit_many(base_url(fault_api), 4000, 160, fault_stack.api_key)
    worker = start_worker(fault_stack.env, fault_stack.log_dir, "worker-fault-db")
    db_name = fault_stack.settings.database_url.rsplit("/", 1)[1]
    try:
        for drop in (1, 2):
            wait_succeeded(fault_stack, ids, 40 * drop, timeout=120)
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
                dropped = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()", (db_name,)
                ).fetchone()
            print(f"drop {drop}: terminated {dropped[0] if dropped else 0} connections")
        wait_succeeded(fault_stack, ids, len(ids), timeout=150)
    finally:
        worker.stop()
    assert_none_lost(fault_stack, ids, "dropped DB connections")
