"""The control process's queue metrics on Postgres: depth, running jobs, oldest age and
overdue jobs per model and priority; throughput, backlog seconds and live workers per model;
what a scrape shows while the database is down."""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from shared import workers_repo
from shared.db import make_engine, make_session_factory
from shared.jobs import repo
from shared.jobs.status import JobStatus
from shared.models import Job, Tenant, Worker
from shared.settings import Settings
from shared.timeutil import utcnow
from tests.helpers.services import free_port
from worker.control.queue_metrics import WINDOW_SECONDS, QueueCollector

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def add_job(sessions: sessionmaker[Session], model: str, status: JobStatus, priority: int = 5,
            created_at: datetime | None = None, finished_at: datetime | None = None,
            expires_at: datetime | None = None) -> uuid.UUID:
    job_id = uuid.uuid4()
    with sessions.begin() as session:
        if session.get(Tenant, "t") is None:
            session.add(Tenant(id="t"))
            session.flush()
        session.add(Job(id=job_id, tenant_id="t", status=status, model=model, prompt="p",
                        params={}, priority=priority, created_at=created_at or utcnow(),
                        finished_at=finished_at, expires_at=expires_at))
    return job_id


def add_worker(sessions: sessionmaker[Session], model: str) -> None:
    with sessions.begin() as session:
        workers_repo.register(session, Worker(id=f"w-{uuid.uuid4().hex[:6]}", model=model,
                                              engine="echo", queue="q", max_batch_size=8))


def scrape(registry: CollectorRegistry) -> Samples:
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def collector(sessions: sessionmaker[Session], clock: Clock) -> tuple[QueueCollector,
                                                                      CollectorRegistry]:
    registry = CollectorRegistry()
    queues = QueueCollector(sessions, worker_ttl_seconds=20, clock=clock)
    registry.register(queues)
    return queues, registry


def test_backlogs_by_priority_group_each_models_jobs(pg_sessions: sessionmaker[Session]) -> None:
    now = utcnow()
    old = now - timedelta(minutes=5)
    add_job(pg_sessions, "m", JobStatus.queued, created_at=old)
    add_job(pg_sessions, "m", JobStatus.queued, expires_at=now - timedelta(seconds=1))
    add_job(pg_sessions, "m", JobStatus.running)
    add_job(pg_sessions, "m", JobStatus.queued, priority=7)
    add_job(pg_sessions, "n", JobStatus.running, priority=0)
    add_job(pg_sessions, "done", JobStatus.succeeded, finished_at=now)
    with pg_sessions() as session:
        rows = repo.backlogs_by_priority(session, now)
    assert rows == [
        repo.ClassBacklog("m", 5, queued=2, running=1, oldest_queued_at=old, overdue=1),
        repo.ClassBacklog("m", 7, queued=1, running=0, oldest_queued_at=rows[1].oldest_queued_at,
                          overdue=0),
        repo.ClassBacklog("n", 0, queued=0, running=1, oldest_queued_at=None, overdue=0),
    ]


def test_succeeded_since_counts_recent_successes_per_model(
        pg_sessions: sessionmaker[Session]) -> None:
    now = utcnow()
    for _ in range(3):
        add_job(pg_sessions, "m", JobStatus.succeeded, finished_at=now - timedelta(seconds=10))
    add_job(pg_sessions, "m", JobStatus.succeeded, finished_at=now - timedelta(minutes=10))
    add_job(pg_sessions, "m", JobStatus.failed, finished_at=now)
    with pg_sessions() as session:
        assert repo.succeeded_since(session, now - timedelta(minutes=5)) == {"m": 3}


def test_a_scrape_shows_each_model_and_priority(pg_sessions: sessionmaker[Session]) -> None:
    now = utcnow()
    add_job(pg_sessions, "busy", JobStatus.queued, created_at=now - timedelta(minutes=5))
    add_job(pg_sessions, "busy", JobStatus.queued, priority=7)
    add_job(pg_sessions, "busy", JobStatus.running)
    for _ in range(6):
        add_job(pg_sessions, "busy", JobStatus.succeeded, finished_at=now - timedelta(seconds=5))
    add_job(pg_sessions, "stranded", JobStatus.queued,
            expires_at=now - timedelta(seconds=30))  # past its deadline
    add_worker(pg_sessions, "busy")
    add_worker(pg_sessions, "idle")
    with pg_sessions.begin() as session:
        workers_repo.record_cold_start(session, "stranded", 73.0)

    samples = scrape(collector(pg_sessions, Clock())[1])

    assert value(samples, "vlmq_queue_stats_up") == 1
    assert value(samples, "vlmq_queue_depth", model="busy", priority="5") == 1
    assert value(samples, "vlmq_queue_depth", model="busy", priority="7") == 1
    assert value(samples, "vlmq_queue_running", model="busy", priority="5") == 1
    assert value(samples, "vlmq_queue_oldest_age_seconds", model="busy", priority="5") >= 300
    assert value(samples, "vlmq_queue_overdue", model="stranded", priority="5") == 1
    assert value(samples, "vlmq_queue_overdue", model="busy", priority="5") == 0
    per_second = 6 / WINDOW_SECONDS
    assert value(samples, "vlmq_queue_throughput_per_second", model="busy") == per_second
    assert math.isclose(value(samples, "vlmq_queue_backlog_seconds", model="busy"),
                        2 / per_second)
    # Jobs waiting and none succeeding: no finite drain time.
    assert value(samples, "vlmq_queue_backlog_seconds", model="stranded") == math.inf
    assert value(samples, "vlmq_workers_live", model="stranded") == 0
    # Scaled to zero, the model's cold start is still there to read.
    assert value(samples, "vlmq_model_cold_start_seconds", model="stranded") == 73.0
    # A live worker's model is reported with nothing queued.
    assert value(samples, "vlmq_workers_live", model="busy") == 1
    assert value(samples, "vlmq_workers_live", model="idle") == 1
    assert value(samples, "vlmq_queue_backlog_seconds", model="idle") == 0
    assert ("vlmq_queue_depth", frozenset({("model", "idle"), ("priority", "5")})) not in samples


def test_scrapes_share_a_read_and_a_drained_queue_falls_to_zero(
        pg_sessions: sessionmaker[Session]) -> None:
    clock = Clock()
    _, registry = collector(pg_sessions, clock)
    job = add_job(pg_sessions, "m", JobStatus.queued, priority=2)
    assert value(scrape(registry), "vlmq_queue_depth", model="m", priority="2") == 1

    with pg_sessions.begin() as session:
        session.get_one(Job, job).status = JobStatus.cancelled
    clock.now += 1  # within the cache: the previous read
    assert value(scrape(registry), "vlmq_queue_depth", model="m", priority="2") == 1
    clock.now += 10
    samples = scrape(registry)
    assert value(samples, "vlmq_queue_depth", model="m", priority="2") == 0
    assert value(samples, "vlmq_queue_oldest_age_seconds", model="m", priority="2") == 0
    assert value(samples, "vlmq_queue_backlog_seconds", model="m") == 0


def test_an_unreachable_database_leaves_the_numbers_out() -> None:
    settings = Settings(database_url=f"postgresql://vlmq@127.0.0.1:{free_port()}/vlmq")
    engine = make_engine(settings)
    try:
        samples = scrape(collector(make_session_factory(engine), Clock())[1])
    finally:
        engine.dispose()
    assert samples == {("vlmq_queue_stats_up", frozenset()): 0}
