"""Everything a worker process holds for its lifetime: the resident engine and its clients."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from celery import Celery
from sqlalchemy import Engine as DbEngine
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine, make_session_factory
from shared.queue import make_celery
from shared.settings import EngineKind, Settings
from shared.storage import ObjectStore, make_store
from worker.batcher import BatchingEngine
from worker.engines.base import Engine, StepBackend
from worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    settings: Settings
    db: DbEngine
    sessions: sessionmaker[Session]
    store: ObjectStore
    engine: Engine
    metrics: WorkerMetrics
    celery: Celery
    # Jobs this process is running; their leases are renewed while they are here.
    running: set[uuid.UUID] = field(default_factory=set)

    @classmethod
    def start(cls, settings: Settings) -> WorkerContext:
        metrics = WorkerMetrics(settings.model)
        if settings.metrics_port:
            metrics.serve(settings.metrics_port)
        db = make_engine(settings)
        log.info("loading %s engine for model %s from %s", settings.engine, settings.model,
                 settings.model_path)
        engine = BatchingEngine(
            lambda: load_backend(settings),
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            metrics=metrics,
        )
        return cls(
            settings=settings,
            db=db,
            sessions=make_session_factory(db),
            store=make_store(settings),
            engine=engine,
            metrics=metrics,
            celery=make_celery(settings),
        )

    def close(self) -> None:
        try:
            self.engine.shutdown()
        finally:
            self.db.dispose()


def load_backend(settings: Settings) -> StepBackend:
    if settings.engine == EngineKind.vllm:
        from worker.engines.vllm_backend import VllmBackend

        return VllmBackend.from_settings(settings)
    from worker.engines.transformers_backend import TransformersBackend

    return TransformersBackend(
        settings.model_path,
        max_model_len=settings.max_model_len,
        max_batch_size=settings.max_batch_size,
        ignore_eos=settings.ignore_eos,
    )
