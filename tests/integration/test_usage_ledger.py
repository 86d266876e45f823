"""The usage ledger on Postgres, where each count rides in the statement that inserts or
moves its jobs (tests/unit/test_usage_ledger.py has the run of mixed outcomes); and
concurrent writers, each on its own shard of the hour."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.jobs import transitions
from shared.jobs.status import JobStatus
from shared.models import Batch, Job, Tenant, UsageHour
from shared.timeutil import utcnow
from shared.usage import ledger, report
from tests.unit.test_usage_ledger import (
    _job_row,
    _submit,
    assert_ledger_matches_jobs,
    run_mixed_outcomes,
)


@pytest.fixture()
def direct(pg_sessions: sessionmaker[Session]) -> Iterator[Engine]:
    """An autocommitting engine on the same database, as the API inserts with."""
    bind = pg_sessions.kw["bind"]
    yield bind.execution_options(isolation_level="AUTOCOMMIT")


def test_the_ledger_equals_the_jobs_it_counts_and_outlives_them(
    pg_sessions: sessionmaker[Session], direct: Engine,
) -> None:
    run_mixed_outcomes(pg_sessions, direct)
    assert_ledger_matches_jobs(pg_sessions)
    with pg_sessions() as session:
        counted = report.per_tenant_and_model(session)
    with pg_sessions.begin() as session:  # every job, batch and tenant gone
        for table in (Job, Batch, Tenant):
            session.execute(delete(table))
    with pg_sessions() as session:
        assert report.per_tenant_and_model(session) == counted


def test_an_insert_and_its_count_are_one_statement(pg_sessions: sessionmaker[Session],
                                                   direct: Engine) -> None:
    """A refused insert (here a duplicate Idempotency-Key) counts nothing."""
    with pg_sessions() as session:
        session.add(Tenant(id="acme"))
        session.commit()
    _submit(direct, _job_row("acme", "m", 0, idempotency_key="k"))
    with pytest.raises(Exception, match="uq_jobs_tenant_idempotency_key"):
        _submit(direct, _job_row("acme", "m", 0, idempotency_key="k"))
    with pg_sessions() as session:
        assert report.per_tenant_and_model(session)[("acme", "m")].accepted == 1


def test_writers_on_other_shards_do_not_wait_for_each_other(
    pg_sessions: sessionmaker[Session], direct: Engine, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One transaction holds its shard's row of the hour (a move counted, not committed);
    an insert on another shard of the same tenant, model and hour goes through meanwhile.
    Then many threads at once: every count lands."""
    with pg_sessions() as session:
        session.add(Tenant(id="acme"))
        session.commit()
    shards = {"holder": 1, "MainThread": 2}
    monkeypatch.setattr(ledger, "shard", lambda: shards.get(threading.current_thread().name,
                                                           threading.get_native_id() % 16))
    _submit(direct, _job_row("acme", "m", 0))
    holder_done = threading.Event()
    moved = threading.Event()

    def hold() -> None:
        with pg_sessions() as session:
            job_id = session.scalar(select(Job.id))
            assert transitions.cancel(session, job_id, code="cancelled", message="bye",
                                      now=utcnow())
            moved.set()
            holder_done.wait(10)
            session.commit()

    holder = threading.Thread(target=hold, name="holder")
    holder.start()
    try:
        assert moved.wait(10)
        started = time.monotonic()
        with direct.connect() as conn:
            conn.exec_driver_sql("SET lock_timeout = '2s'")
            ledger.insert_job(conn, _job_row("acme", "m", 1))
        assert time.monotonic() - started < 1.0
    finally:
        holder_done.set()
        holder.join()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: _submit(direct, _job_row("acme", "m", n)), range(200)))
    with pg_sessions() as session:
        counted = report.per_tenant_and_model(session)[("acme", "m")]
        jobs = session.scalar(select(func.count()).select_from(Job))
        shards_used = session.scalar(select(func.count(UsageHour.shard.distinct())))
    assert (counted.accepted, counted.cancelled) == (jobs, 1) == (202, 1)
    assert shards_used > 1


def test_a_terminal_move_that_moves_nothing_counts_nothing(
    pg_sessions: sessionmaker[Session], direct: Engine,
) -> None:
    with pg_sessions() as session:
        session.add(Tenant(id="acme"))
        session.commit()
    row = _job_row("acme", "m", 0)
    _submit(direct, row)
    for _ in range(2):
        with pg_sessions() as session:
            transitions.cancel(session, row["id"], code="cancelled", message="bye",
                               now=utcnow())
            session.commit()
    with pg_sessions() as session:
        assert session.get(Job, row["id"]).status == JobStatus.cancelled  # type: ignore[union-attr]
        assert report.per_tenant_and_model(session)[("acme", "m")].cancelled == 1
