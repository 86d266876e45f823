"""The query KEDA scales GPU workers on, exactly as the rendered ScaledObjects carry it, on a
migrated Postgres: it counts a model's queued and running jobs and nothing else, and each of
its counts is an index scan, since KEDA runs it for every model every pollingInterval,
however long the jobs table grows."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from shared.jobs.status import JobStatus
from shared.models import Job, Tenant
from tests.system.test_k8s_manifests import OVERLAY, kubectl_or_skip, render


@pytest.fixture(scope="module")
def queries() -> dict[str, str]:
    """Each worker Deployment's model, and the query of the ScaledObject that targets it."""
    kubectl_or_skip()
    objects = render(OVERLAY)
    models = {
        o["metadata"]["name"]: env_value(o, "VLMQ_MODEL")
        for o in objects if o["kind"] == "Deployment" and o["spec"]["template"]["spec"]
        ["containers"][0]["name"] == "worker"
    }
    out = {}
    for o in objects:
        if o["kind"] == "ScaledObject":
            trigger = o["spec"]["triggers"][0]
            assert trigger["type"] == "postgresql"
            out[models[o["spec"]["scaleTargetRef"]["name"]]] = trigger["metadata"]["query"]
    assert len(out) == 2, out
    return out


def env_value(deployment: dict, name: str) -> str:
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    return next(e["value"] for e in env if e["name"] == name)


def add_jobs(sessions: sessionmaker[Session], model: str, counts: dict[JobStatus, int]) -> None:
    with sessions.begin() as session:
        if session.get(Tenant, "t") is None:
            session.add(Tenant(id="t"))
            session.flush()
        for status, n in counts.items():
            for _ in range(n):
                session.add(Job(id=uuid.uuid4(), tenant_id="t", status=status, model=model,
                                prompt="p", params={}))


def count(sessions: sessionmaker[Session], query: str) -> int:
    with sessions() as session:
        return int(session.execute(text(query)).scalar_one())


def test_the_query_counts_the_models_queued_and_running_jobs(
    pg_sessions: sessionmaker[Session], queries: dict[str, str]
) -> None:
    (model_a, query_a), (model_b, query_b) = sorted(queries.items())
    assert count(pg_sessions, query_a) == 0  # an empty queue: KEDA may go to zero workers

    every_end = {JobStatus.succeeded: 2, JobStatus.failed: 1, JobStatus.cancelled: 1,
                 JobStatus.expired: 1}
    add_jobs(pg_sessions, model_a, {JobStatus.queued: 3, JobStatus.running: 2, **every_end})
    add_jobs(pg_sessions, model_b, {JobStatus.queued: 1, **every_end})
    add_jobs(pg_sessions, "a-model-with-no-workers-here", {JobStatus.queued: 4})

    assert count(pg_sessions, query_a) == 5
    assert count(pg_sessions, query_b) == 1


def test_each_count_is_an_index_scan(
    pg_sessions: sessionmaker[Session], queries: dict[str, str]
) -> None:
    add_jobs(pg_sessions, "m", {JobStatus.queued: 5, JobStatus.running: 5,
                                JobStatus.succeeded: 20})
    for query in queries.values():
        with pg_sessions() as session:
            session.execute(text("ANALYZE jobs"))
            # Tiny tables are scanned whole whenever allowed; forbidding it shows whether an
            # index can answer at all, which is what a large table needs.
            session.execute(text("SET enable_seqscan = off"))
            plan = "\n".join(row[0] for row in session.execute(text("EXPLAIN " + query)))
        assert "Seq Scan" not in plan, plan
        # Queued jobs: the claim's own partial index, by model alone.
        assert "ix_jobs_claim" in plan, plan
        # Running jobs: an index led by status (the running few are then filtered by model).
        assert "Index Cond: ((status)::text = 'running'::text)" in plan, plan
