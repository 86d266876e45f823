"""What the routes need, built once per process in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from fastapi import Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine, make_session_factory
from shared.queue import make_celery
from shared.settings import Settings
from shared.storage import ObjectStore, make_store


@dataclass
class ApiDeps:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: ObjectStore
    celery: Celery

    @classmethod
    def build(cls, settings: Settings) -> ApiDeps:
        engine = make_engine(settings)
        celery = make_celery(settings)
        # Built lazily by Celery on the first send; when many requests race to build it
        # they serialise on the import lock, so build it before serving.
        _ = celery.producer_pool
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_session_factory(engine),
            store=make_store(settings),
            celery=celery,
        )

    def close(self) -> None:
        self.engine.dispose()


def get_deps(request: Request) -> ApiDeps:
    return request.app.state.deps
