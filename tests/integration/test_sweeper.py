"""The one sweeper, on real Postgres: the advisory lock, takeover, and what a sweep does."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine, make_session_factory
from shared.jobs import lifecycle
from shared.jobs import repo as jobs_repo
from shared.jobs import transitions as jobs_transitions
from shared.jobs.lifecycle import Result, RetryPolicy, Succeeded
from shared.jobs.status import JobStatus
from shared.jobs.sweeper import SWEEPER_LOCK_KEY, Sweeper
from shared.migrate import upgrade_head
from shared.models import Job
from shared.settings import Settings
from shared.timeutil import utcnow
from shared.webhooks import repo as deliveries_repo
from tests.helpers.services import fresh_database

PERIOD = 0.2
# Backoff 0: a requeued job is claimable at once, so the fencing test needs no sleep.
POLICY = RetryPolicy(max_attempts=2, backoff_seconds=0, backoff_max_seconds=0)
HOOK = "https://hooks.example.com/vlmq"


@pytest.fixture()
def settings() -> Iterator[Settings]:
    # A database of its own: advisory locks are per database, so no other test's
    # sweeper competes for this one's lock.
    with fresh_database() as url:
        settings = Settings(database_url=url)
        upgrade_head(settings)
        yield settings


@pytest.fixture()
def engines(settings: Settings) -> Iterator[Callable[[], Engine]]:
    made: list[Engine] = []

    def make() -> Engine:
        made.append(make_engine(settings))
        return made[-1]

    yield make
    for engine in made:
        engine.dispose()


@pytest.fixture()
def sessions(engines: Callable[[], Engine]) -> sessionmaker[Session]:
    return make_session_factory(engines())


def new_sweeper(engines: Callable[[], Engine]) -> Sweeper:
    # Its own engine, as in its own process: the lock belongs to one database session.
    engine = engines()
    return Sweeper(engine, make_session_factory(engine), POLICY, PERIOD)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout}s: {what}")
        time.sleep(PERIOD / 4)


def holders(*sweepers: Sweeper) -> list[Sweeper]:
    return [s for s in sweepers if s.holds_lock]


def lock_backends(settings: Settings) -> list[int]:
    """Backend pids that hold the sweeper lock, as Postgres sees it."""
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid::bigint = %s AND objid::bigint = %s "
            # pg_locks is cluster-wide; other tests' workers sweep their own databases.
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (SWEEPER_LOCK_KEY >> 32, SWEEPER_LOCK_KEY & 0xFFFFFFFF),
        ).fetchall()
    return [row[0] for row in rows]


def insert_job(sessions: sessionmaker[Session], **fields: Any) -> uuid.UUID:
    columns: dict[str, Any] = dict(
        tenant_id="default", model="m", prompt="p", params={}, image_key="k",
        image_sha256="0" * 64,
        image_bytes=1, image_format="PNG", image_width=1, image_height=1,
        attempts=0, priority=5,
    )
    job = Job(**{**columns, **fields})
    with sessions() as session:
        jobs_repo.insert_job(session, job)
        session.commit()
    return job.id


def read(sessions: sessionmaker[Session], job_id: uuid.UUID) -> Job:
    with sessions() as session:
        job = jobs_repo.get_job(session, job_id)
    assert job is not None
    return job


def running(sessions: sessionmaker[Session], attempts: int, lease_in: float,
            **fields: Any) -> uuid.UUID:
    now = utcnow()
    return insert_job(sessions, status=JobStatus.running, attempts=attempts, started_at=now,
                      lease_expires_at=now + timedelta(seconds=lease_in), **fields)


def test_one_sweeper_holds_the_lock_and_another_takes_over_when_it_stops(
    settings: Settings, engines: Callable[[], Engine], sessions: sessionmaker[Session]
) -> None:
    a, b = new_sweeper(engines), new_sweeper(engines)
    a.start()
    b.start()
    try:
        wait_until(lambda: len(holders(a, b)) == 1, 5, "one sweeper holds the lock")
        [holder] = holders(a, b)
        other = b if holder is a else a
        time.sleep(3 * PERIOD)
        assert holders(a, b) == [holder]
        assert len(lock_backends(settings)) == 1

        holder.stop()
        wait_until(lambda: other.holds_lock, 5 * PERIOD + 2, "the other sweeper takes over")
        assert not holder.holds_lock and len(lock_backends(settings)) == 1

        # The new holder sweeps on its own.
        overdue = insert_job(sessions, status=JobStatus.queued,
                             expires_at=utcnow() - timedelta(seconds=1))
        wait_until(lambda: read(sessions, overdue).status == JobStatus.expired, 5,
                   "the new holder expires an overdue job")
    finally:
        a.stop()
        b.stop()
    assert lock_backends(settings) == []


def test_a_holder_whose_connection_is_killed_notices_and_one_sweeper_holds_the_lock(
    settings: Settings, engines: Callable[[], Engine]
) -> None:
    a, b = new_sweeper(engines), new_sweeper(engines)
    a.start()
    b.start()
    try:
        wait_until(lambda: len(lock_backends(settings)) == 1, 5, "the lock is taken")
        [killed] = lock_backends(settings)
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            assert conn.execute("SELECT pg_terminate_backend(%s)", (killed,)).fetchone() == (True,)

        def settled() -> bool:
            backends = lock_backends(settings)
            # Were the old holder to go on believing it held the lock, both would claim it.
            return len(backends) == 1 and backends[0] != killed and len(holders(a, b)) == 1

        wait_until(settled, 5 * PERIOD + 2, "exactly one sweeper holds the lock again")
        time.sleep(3 * PERIOD)
        assert settled()
    finally:
        a.stop()
        b.stop()


def test_sweep_expires_an_overdue_job_and_records_its_expired_event(
    engines: Callable[[], Engine], sessions: sessionmaker[Session]
) -> None:
    past, future = utcnow() - timedelta(seconds=1), utcnow() + timedelta(hours=1)
    overdue = insert_job(sessions, status=JobStatus.queued, expires_at=past, webhook_url=HOOK)
    unsubscribed = insert_job(sessions, status=JobStatus.queued, expires_at=past,
                              webhook_url=HOOK, webhook_events=["job.succeeded"])
    in_time = insert_job(sessions, status=JobStatus.queued, expires_at=future, webhook_url=HOOK)

    assert new_sweeper(engines).sweep() == (0, 2)

    job = read(sessions, overdue)
    assert (job.status, job.error_code) == (JobStatus.expired, "expired")
    assert job.finished_at is not None
    assert read(sessions, unsubscribed).status == JobStatus.expired
    assert read(sessions, in_time).status == JobStatus.queued
    with sessions() as session:
        [delivery] = deliveries_repo.for_job(session, overdue)
        assert (delivery.event, delivery.url, delivery.status) == ("job.expired", HOOK, "pending")
        assert deliveries_repo.for_job(session, unsubscribed) == []
        assert deliveries_repo.for_job(session, in_time) == []


def test_sweep_requeues_a_lapsed_lease_and_fails_it_once_attempts_are_used_up(
    engines: Callable[[], Engine], sessions: sessionmaker[Session]
) -> None:
    retried = running(sessions, attempts=1, lease_in=-1)
    used_up = running(sessions, attempts=POLICY.max_attempts, lease_in=-1, webhook_url=HOOK)
    alive = running(sessions, attempts=1, lease_in=60)

    assert new_sweeper(engines).sweep() == (2, 0)

    job = read(sessions, retried)
    assert (job.status, job.attempts, job.error_code) == (JobStatus.queued, 1, "worker_lost")
    assert job.lease_expires_at is None and job.runnable_at is not None
    job = read(sessions, used_up)
    assert (job.status, job.error_code) == (JobStatus.failed, "worker_lost")
    assert job.error_message is not None and "after 2 attempts" in job.error_message
    with sessions() as session:
        [delivery] = deliveries_repo.for_job(session, used_up)
    assert delivery.event == "job.failed"
    assert read(sessions, alive).status == JobStatus.running


def test_a_late_result_from_a_reaped_attempt_is_discarded(
    engines: Callable[[], Engine], sessions: sessionmaker[Session]
) -> None:
    job_id = running(sessions, attempts=1, lease_in=-1)
    assert new_sweeper(engines).sweep() == (1, 0)
    with sessions() as session:
        [claimed] = jobs_transitions.claim_batch(session, "m", 10, lease_seconds=30)
        session.commit()
    assert (claimed.id, claimed.attempt) == (job_id, 2)

    def result(attempt: int, text: str) -> lifecycle.Recorded:
        with sessions() as session:
            done = lifecycle.record(
                session, [Succeeded(job_id, attempt, Result(text, 3, 2, "stop"))], POLICY
            )
            session.commit()
        return done

    assert result(1, "late").discarded == [job_id]
    job = read(sessions, job_id)
    assert (job.status, job.attempts, job.result_text) == (JobStatus.running, 2, None)

    assert result(2, "fresh").succeeded == [job_id]
    job = read(sessions, job_id)
    assert (job.status, job.attempts, job.result_text) == (JobStatus.succeeded, 2, "fresh")
    assert (job.prompt_tokens, job.completion_tokens, job.finish_reason) == (3, 2, "stop")
