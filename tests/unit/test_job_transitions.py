"""Walks the job table (shared/jobs/status.py) through its verbs (shared/jobs/transitions.py)
on real rows: every verb moves a job from each state the table allows it to leave, and
refuses every other state, leaving the row as it was. tests/integration/ runs the same walk
on Postgres, where results are written by the bulk statement."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine, make_session_factory
from shared.jobs import transitions
from shared.jobs.lifecycle import Result, Succeeded
from shared.jobs.status import ALLOWED_FROM, CREATED_AS, JobStatus
from shared.models import Batch, Job, Tenant
from shared.timeutil import utcnow
from tests.helpers.embedded import embedded_settings

BATCH = "batch_" + "0" * 24


def _verb_call(verb: str, job_id: uuid.UUID, attempt: int) -> Callable[[Session], Any]:
    now = utcnow()
    calls: dict[str, Callable[[Session], Any]] = {
        "claim_batch": lambda s: transitions.claim_batch(s, "m", 10, lease_seconds=30),
        "succeed_many": lambda s: transitions.succeed_many(
            s, [Succeeded(job_id, attempt, Result("hi", 1, 2, "stop"))]),
        "retry": lambda s: transitions.retry(s, job_id, attempt, runnable_at=now,
                                             code="engine_error", message="again"),
        "fail": lambda s: transitions.fail(s, job_id, attempt, code="bad", message="no",
                                           now=now),
        "cancel": lambda s: transitions.cancel(s, job_id, code="cancelled", message="bye",
                                               now=now),
        "expire_overdue": lambda s: transitions.expire_overdue(s, now, "late"),
        "cancel_batch_lines": lambda s: transitions.cancel_batch_lines(
            s, BATCH, "batch_cancelled", "cancelled"),
        "expire_batch_lines": lambda s: transitions.expire_batch_lines(
            s, BATCH, "batch_expired", "expired"),
    }
    return calls[verb]


def seed(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        session.add(Tenant(id="t"))
        session.flush()
        session.add(Batch(id=BATCH, tenant_id="t", endpoint="/v1/chat/completions",
                          input_file_id="file-" + "0" * 24, completion_window="24h",
                          status="in_progress", priority=5, expires_at=utcnow()))
        session.commit()


def insert(sessions: sessionmaker[Session], status: JobStatus, attempts: int = 1,
           batch_id: str | None = BATCH, expires_at: datetime | None = None) -> uuid.UUID:
    job_id = uuid.uuid4()
    with sessions() as session:
        session.add(Job(id=job_id, tenant_id="t", status=status, model="m", prompt="p",
                        params={}, attempts=attempts, batch_id=batch_id,
                        batch_line=job_id.int % 2**31 if batch_id else None,
                        expires_at=expires_at, started_at=utcnow(), runnable_at=None))
        session.commit()
    return job_id


def status_of(sessions: sessionmaker[Session], job_id: uuid.UUID) -> JobStatus:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return JobStatus(job.status)


def walk(sessions: sessionmaker[Session]) -> None:
    """Every verb from every state, each on a row of its own that is the only one there."""
    seed(sessions)
    for verb, move in transitions.VERBS.items():
        for source in JobStatus:
            if verb == "expire_overdue":  # a job of its own past its deadline (claims skip
                # those); a batch's lines expire with their batch
                job_id = insert(sessions, source, batch_id=None,
                                expires_at=utcnow() - timedelta(seconds=1))
            else:
                job_id = insert(sessions, source)
            with sessions() as session:
                _verb_call(verb, job_id, attempt=1)(session)
                session.commit()
            after = status_of(sessions, job_id)
            expected = move.target if source in move.sources else source
            assert after == expected, f"{verb} from {source}: {after}, wanted {expected}"
            with sessions() as session:  # one row at a time: the bulk verbs see only it
                session.delete(session.get(Job, job_id))
                session.commit()


def walk_fencing(sessions: sessionmaker[Session]) -> None:
    """A worker's verbs change nothing for an attempt that is not the job's current one."""
    seed(sessions)
    for verb in ("succeed_many", "retry", "fail"):
        job_id = insert(sessions, JobStatus.running, attempts=2)
        with sessions() as session:
            _verb_call(verb, job_id, attempt=1)(session)
            session.commit()
        assert status_of(sessions, job_id) == JobStatus.running, verb


@pytest.fixture()
def sessions(state_root: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(embedded_settings(state_root))
    yield make_session_factory(engine)
    engine.dispose()


def test_every_allowed_move_has_a_verb_and_every_verb_stays_in_the_table() -> None:
    allowed = {(s, t) for t, sources in ALLOWED_FROM.items() for s in sources}
    by_verbs = {(s, m.target) for m in transitions.VERBS.values() for s in m.sources}
    assert by_verbs == allowed
    assert CREATED_AS == {JobStatus.queued, JobStatus.failed}


def test_each_verb_moves_from_its_states_and_refuses_the_others(
    sessions: sessionmaker[Session],
) -> None:
    walk(sessions)


def test_worker_verbs_are_fenced_by_the_attempt(sessions: sessionmaker[Session]) -> None:
    walk_fencing(sessions)


def test_the_sweeper_leaves_a_batchs_overdue_lines_to_the_batch(
    sessions: sessionmaker[Session],
) -> None:
    seed(sessions)
    past = utcnow() - timedelta(seconds=1)
    line = insert(sessions, JobStatus.queued, expires_at=past)
    own = insert(sessions, JobStatus.queued, batch_id=None, expires_at=past)
    with sessions() as session:
        assert transitions.expire_overdue(session, utcnow(), "late") == 1
        session.commit()
    assert (status_of(sessions, line), status_of(sessions, own)) == (
        JobStatus.queued, JobStatus.expired)


def test_creation_verbs_make_queued_and_failed_rows() -> None:
    row = transitions.created(id=uuid.uuid4(), prompt="p")
    assert row["status"] == JobStatus.queued
    now = utcnow()
    transitions.created_failed(row, "invalid_request", "bad", now)
    assert (row["status"], row["error_code"], row["finished_at"]) == (
        JobStatus.failed, "invalid_request", now)
