"""A model's backlog as `GET /v1/models` shows it: queued and running jobs (batch lines
included) and when the oldest waiting one was created, on Postgres."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from shared.jobs import repo
from shared.jobs.status import JobStatus
from shared.models import Job
from shared.timeutil import utcnow
from tests.unit.test_job_transitions import insert, seed


def test_backlog_counts_each_models_waiting_and_running_jobs(
    pg_sessions: sessionmaker[Session],
) -> None:
    seed(pg_sessions)
    oldest = insert(pg_sessions, JobStatus.queued, batch_id=None)
    insert(pg_sessions, JobStatus.queued)  # a batch line waits like any job
    insert(pg_sessions, JobStatus.running, batch_id=None)
    insert(pg_sessions, JobStatus.succeeded, batch_id=None)
    insert(pg_sessions, JobStatus.cancelled, batch_id=None)
    created = utcnow() - timedelta(minutes=5)
    with pg_sessions.begin() as session:
        session.get_one(Job, oldest).created_at = created

    with pg_sessions() as session:
        backlogs = repo.backlogs(session, ["m", "idle"])
    assert backlogs["m"] == repo.Backlog(queued=2, running=1, oldest_queued_at=created)
    assert backlogs["idle"] == repo.Backlog(queued=0, running=0, oldest_queued_at=None)
