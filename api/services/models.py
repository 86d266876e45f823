"""The models served right now: those with a worker seen within the worker TTL."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from shared import workers_repo
from shared.settings import LifecycleSettings


def live_models(reads: sessionmaker[Session],
                lifecycle: LifecycleSettings) -> list[workers_repo.ModelInfo]:
    with reads() as session:
        return workers_repo.live_models(session, lifecycle.worker_ttl_seconds)
