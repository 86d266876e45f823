"""The readiness probes: one round trip to each dependency, raising when it fails."""

from __future__ import annotations

from celery import Celery
from sqlalchemy import Engine, text


def ping_database(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def ping_broker(celery: Celery) -> None:
    with celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
