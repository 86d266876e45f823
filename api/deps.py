"""What the routes need, built once per process in the app's lifespan."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from celery import Celery
from fastapi import Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.infra.image_budget import ImageMemoryBudget
from api.infra.key_cache import KeyCache
from api.infra.metrics import ApiMetrics
from api.infra.quotas import SubmitLimits
from api.infra.terminal_watch import TerminalWatch
from shared.db import make_engine, make_session_factory
from shared.jobs import events as task_events
from shared.jobs.intake import Intake
from shared.queue import make_celery
from shared.settings import Settings
from shared.storage import ObjectStore, make_store
from shared.task_events import TaskEventSender
from shared.wakeups import WakeupSender


@dataclass
class ApiDeps:
    settings: Settings
    engine: Engine
    # Write transactions, opened by the services with `sessions.begin()`.
    sessions: sessionmaker[Session]
    # Autocommit: single-statement writes and plain reads, one round trip each.
    autocommit: Engine
    reads: sessionmaker[Session]
    store: ObjectStore
    celery: Celery
    wakeups: WakeupSender
    watch: TerminalWatch
    keys: KeyCache
    limits: SubmitLimits
    metrics: ApiMetrics
    image_memory: ImageMemoryBudget
    # The checks and the image store every new job passes (shared/jobs/intake.py).
    intake: Intake
    # Started with the app: the task events of the jobs this process cancels.
    task_events: TaskEventSender | None = None

    @classmethod
    def build(cls, settings: Settings, metrics: ApiMetrics) -> ApiDeps:
        # Transactions are rare here (cancel), so their pool is small.
        engine = make_engine(settings, pool_size=2, max_overflow=8)
        # No overflow: under a burst (a thousand long polls woken at once) overflow
        # connections would be opened and closed per request; threads wait for one instead.
        direct = make_engine(settings, autocommit=True, pool_size=20, max_overflow=0)
        celery = make_celery(settings)
        reads = make_session_factory(direct)
        # Built lazily by Celery on the first send; when many requests race to build it
        # they serialise on the import lock, so build it before serving.
        _ = celery.producer_pool
        store = make_store(settings)
        limits = SubmitLimits(settings, reads)
        image_memory = ImageMemoryBudget(
            settings.api_image_memory_bytes, settings.api_image_memory_wait_seconds
        )
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_session_factory(engine),
            autocommit=direct,
            reads=reads,
            store=store,
            celery=celery,
            wakeups=WakeupSender(celery, settings),
            watch=TerminalWatch(settings, direct),
            keys=KeyCache(),
            limits=limits,
            metrics=metrics,
            image_memory=image_memory,
            intake=Intake(settings, store, reads, image_prefixes=limits.image_prefixes,
                          reserve=image_memory.reserve),
        )

    async def start(self) -> None:
        if self.settings.api_metrics_port:
            self.metrics.serve(self.settings.api_metrics_port, self.settings.metrics_host)
        self.wakeups.start()
        self.watch.start()
        self.task_events = task_events.start_sending(
            self.celery, f"vlmq-api@{socket.gethostname()}:{os.getpid()}",
            self.settings.task_events)

    async def close(self) -> None:
        await self.watch.stop()
        self.wakeups.stop()
        task_events.stop_sending(self.task_events)
        self.engine.dispose()
        self.autocommit.dispose()


async def get_deps(request: Request) -> ApiDeps:
    # async: FastAPI runs a plain-def dependency on a worker thread, a hop per request.
    return request.app.state.deps
