"""The usage ledger (shared/usage/) against the jobs it counts: after a run of every kind of
outcome, through the same verbs the API, the recorder, the sweeper and batch expansion
call, its totals equal what the jobs table says, tenant by tenant and model by model. Here
on SQLite (the Python-side tally); tests/integration/test_usage_ledger.py runs the same on
Postgres, where each count rides in the statement of its move."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, case, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from shared.batches import repo as batches
from shared.db import make_engine, make_session_factory
from shared.errors import InvalidInput
from shared.jobs import lifecycle, transitions
from shared.jobs.lifecycle import Failed, Result, RetryPolicy, Succeeded
from shared.jobs.status import JobStatus
from shared.models import Batch, Job, Tenant
from shared.timeutil import utcnow
from shared.usage import ledger, report
from shared.usage.report import Counters
from tests.helpers.embedded import embedded_settings

TENANTS = ("acme", "globex")
MODELS = ("m1", "m2")
POLICY = RetryPolicy(max_attempts=2, backoff_seconds=0, backoff_max_seconds=0)
EVERYTHING = report.Window(datetime(2000, 1, 1, tzinfo=timezone.utc),
                           datetime(2100, 1, 1, tzinfo=timezone.utc))


def _job_row(tenant: str, model: str, n: int, **extra: Any) -> dict[str, Any]:
    now = utcnow()
    image: dict[str, Any] = (
        {"image_key": f"k/{uuid.uuid4()}"} if n % 3 == 0
        else {"image_url": "https://example.com/a.png"} if n % 3 == 1
        else {}  # no image: counted as accepted, not as an image
    )
    return transitions.created(
        id=uuid.uuid4(), tenant_id=tenant, model=model, prompt="describe", params={},
        attempts=0, engine_failures=0, priority=5, created_at=now, runnable_at=now,
        **image, **extra)


def _submit(engine: Engine, row: dict[str, Any]) -> None:
    """As the API inserts: autocommitted on Postgres, a transaction on SQLite."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            ledger.insert_job(conn, row)
        else:
            with conn.begin():
                ledger.insert_job(conn, row)


def _batch(session: Session, tenant: str) -> str:
    batch_id = batches.new_batch_id()
    session.add(Batch(id=batch_id, tenant_id=tenant, endpoint="/v1/chat/completions",
                      input_file_id="file-" + "0" * 24, completion_window="24h",
                      status="in_progress", priority=7,
                      expires_at=utcnow() + timedelta(hours=1)))
    session.flush()
    return batch_id


def _lines(tenant: str, model: str, batch_id: str, lines: range,
           failed: set[int]) -> list[dict[str, Any]]:
    rows = []
    for line in lines:
        row = _job_row(tenant, model, line, batch_id=batch_id, batch_line=line)
        if line in failed:
            transitions.created_failed(row, "invalid_request", "bad line", utcnow())
        rows.append(row)
    return rows


def run_mixed_outcomes(sessions: sessionmaker[Session], direct: Engine) -> None:
    """Every way a job is counted: accepted by the API and by batch expansion (a resumed
    chunk inserted twice, lines created failed); succeeded in bulk, failed, retried (no
    outcome), reaped, cancelled, expired; a batch's lines cancelled and expired."""
    with sessions() as session:
        session.add_all([Tenant(id=t) for t in TENANTS])
        session.commit()
    for i in range(24):
        row = _job_row(TENANTS[i % 2], MODELS[i // 2 % 2], i)
        if i % 8 == 7:  # overdue before it runs: the sweeper expires it
            row["expires_at"] = utcnow() - timedelta(seconds=1)
        _submit(direct, row)
    with sessions() as session:
        cancelled_batch, expired_batch = _batch(session, "acme"), _batch(session, "globex")
        first = _lines("acme", "m1", cancelled_batch, range(0, 6), failed={1})
        batches.insert_lines(session, first)
        batches.insert_lines(session, first[3:] + _lines(  # a chunk resumed: 3 lines again
            "acme", "m1", cancelled_batch, range(6, 9), failed={8}))
        batches.insert_lines(session, _lines("globex", "m2", expired_batch, range(0, 5),
                                             failed={4}))
        session.commit()
    with sessions() as session:
        assert lifecycle.expire_overdue(session) == 3
        session.commit()
    outcomes: list[lifecycle.Outcome] = []
    for model in MODELS:
        with sessions() as session:
            claimed = transitions.claim_batch(session, model, 9, lease_seconds=60)
            session.commit()
        for n, job in enumerate(claimed):
            if n % 4 == 3:
                outcomes.append(Failed(job.id, job.attempt, "image_corrupted", "bad bytes",
                                       transient=False))
            elif n % 4 == 2:  # retried: no outcome yet
                outcomes.append(Failed(job.id, job.attempt, "engine_error", "again",
                                       transient=True))
            else:
                outcomes.append(Succeeded(job.id, job.attempt, Result(
                    "text", 100 + n, 10 + n, "stop", image_tokens=64 if n % 2 else None,
                    engine_seconds=0.25 * (n + 1))))
    with sessions() as session:
        lifecycle.record(session, outcomes, POLICY)
        session.commit()
    with sessions() as session:  # a running job whose worker vanished, out of attempts
        lost = transitions.claim_batch(session, "m2", 1, lease_seconds=-1)
        session.commit()
    with sessions() as session:
        session.get(Job, lost[0].id).attempts = POLICY.max_attempts  # type: ignore[union-attr]
        session.commit()
    with sessions() as session:
        assert lifecycle.reap_lapsed(session, POLICY) == 1
        queued = session.scalars(select(Job.id).where(
            Job.status == JobStatus.queued, Job.batch_id.is_(None)).limit(2)).all()
        session.commit()
    for job_id in queued:  # the client's cancel
        with sessions() as session:
            lifecycle.cancel(session, job_id)
            session.commit()
    with sessions() as session:
        transitions.cancel_batch_lines(session, cancelled_batch, "batch_cancelled", "bye")
        transitions.expire_batch_lines(session, expired_batch, "batch_expired", "late")
        session.commit()


def from_jobs(session: Session) -> dict[tuple[str, str], Counters]:
    """The ledger's counters as the jobs table gives them."""
    def status_is(status: JobStatus) -> Any:
        return func.sum(case((Job.status == status, 1), else_=0))

    rows = session.execute(
        select(Job.tenant_id, Job.model, func.count(),
               status_is(JobStatus.succeeded), status_is(JobStatus.failed),
               status_is(JobStatus.cancelled), status_is(JobStatus.expired),
               func.sum(case((or_(Job.image_key.is_not(None), Job.image_url.is_not(None)), 1),
                             else_=0)),
               *(func.coalesce(func.sum(column), 0) for column in ledger.USAGE_COLUMNS))
        .group_by(Job.tenant_id, Job.model)
    ).all()
    return {(r[0], r[1]): Counters(*(int(v) for v in r[2:-1]), engine_seconds=float(r[-1]))
            for r in rows}


def assert_ledger_matches_jobs(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        expected = from_jobs(session)
        counted = report.per_tenant_and_model(session)
        by_model = report.totals(session, EVERYTHING, "model", None)
        by_day = report.totals(session, EVERYTHING, "day", "acme")
    assert counted.keys() == expected.keys()
    for key, want in expected.items():
        got = counted[key]
        assert got.engine_seconds == pytest.approx(want.engine_seconds)
        assert got == Counters(**{**want.__dict__, "engine_seconds": got.engine_seconds}), key
    assert {(u.tenant_id, u.model): u.counters for u in by_model} == counted
    acme = [c for (tenant, _), c in counted.items() if tenant == "acme"]
    assert [u.day for u in by_day] == [utcnow().date()]
    assert by_day[0].counters.accepted == sum(c.accepted for c in acme)
    # Every kind of outcome happened, so the comparison compared something.
    total = report.grand_total(by_model)
    assert min(total.succeeded, total.failed, total.cancelled, total.expired, total.images,
               total.image_tokens) > 0
    assert total.accepted > total.succeeded + total.failed + total.cancelled + total.expired


@pytest.fixture()
def sqlite_sessions(state_root: Any) -> Iterator[tuple[sessionmaker[Session], Engine]]:
    engine = make_engine(embedded_settings(state_root))
    yield make_session_factory(engine), engine
    engine.dispose()


def test_the_ledger_equals_the_jobs_it_counts(
    sqlite_sessions: tuple[sessionmaker[Session], Engine],
) -> None:
    sessions, engine = sqlite_sessions
    run_mixed_outcomes(sessions, engine)
    assert_ledger_matches_jobs(sessions)


def test_a_window_takes_the_hours_that_begin_in_it() -> None:
    assert ledger.hour_of(datetime(2025, 6, 1, 12, 59, 59, 999999, tzinfo=timezone.utc)) == (
        datetime(2025, 6, 1, 12, tzinfo=timezone.utc))
    zoned = datetime.fromisoformat("2025-06-01T12:30:00+05:30")
    assert ledger.hour_of(zoned) == datetime(2025, 6, 1, 7, tzinfo=timezone.utc)
    span = report.window("2025-06-01", "2025-06-02T00:00:00Z")
    assert (span.start, span.end) == (datetime(2025, 6, 1, tzinfo=timezone.utc),
                                      datetime(2025, 6, 2, tzinfo=timezone.utc))
    now = datetime(2025, 6, 30, tzinfo=timezone.utc)
    assert report.window(None, None, now) == report.Window(now - timedelta(days=30), now)


@pytest.mark.parametrize(("start", "end", "code"), [
    ("yesterday", None, "invalid_time"),
    ("2025-06-01\x00", None, "invalid_time"),
    ("2025-13-01", None, "invalid_time"),
    ("2" * 100, None, "invalid_time"),
    (None, "0001-01-01", "invalid_range"),
    ("2025-06-02", "2025-06-01", "invalid_range"),
    ("2025-06-01", "2025-06-01", "invalid_range"),
    ("2020-01-01", "2025-01-01", "invalid_range"),
])
def test_a_bad_window_is_refused_with_its_reason(start: str | None, end: str | None,
                                                 code: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        report.window(start, end, datetime(2025, 6, 30, tzinfo=timezone.utc))
    assert refused.value.code == code


@pytest.mark.parametrize("value", ["tenant", "", "MODEL", "day\x00"])
def test_group_by_is_model_or_day(value: str) -> None:
    assert [report.group_by(v) for v in report.GROUPS] == ["model", "day"]
    with pytest.raises(InvalidInput) as refused:
        report.group_by(value)
    assert refused.value.code == "invalid_group_by"
