"""The models served right now (those with a worker seen within the worker TTL), each with
its backlog."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from shared import workers_repo
from shared.jobs import repo as jobs_repo
from shared.settings import LifecycleSettings


def live_models(reads: sessionmaker[Session], lifecycle: LifecycleSettings
                ) -> list[tuple[workers_repo.ModelInfo, jobs_repo.Backlog]]:
    with reads() as session:
        live = workers_repo.live_models(session, lifecycle.worker_ttl_seconds)
        backlogs = jobs_repo.backlogs(session, [m.model for m in live])
    return [(m, backlogs[m.model]) for m in live]
