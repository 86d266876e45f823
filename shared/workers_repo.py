"""The live worker registry: workers upsert a heartbeat row, the API reads who is alive.

Functions flush; callers commit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Exists, ScalarSelect, delete, func, select, update
from sqlalchemy.orm import Session

from shared.db import upsert_insert
from shared.models import ModelColdStart, Worker
from shared.timeutil import utcnow


@dataclass(frozen=True)
class ModelInfo:
    model: str
    workers: int
    engines: list[str]
    capacity: int  # jobs the live workers can hold in flight together


def register(session: Session, worker: Worker) -> None:
    session.merge(worker)
    session.flush()


def heartbeat(session: Session, worker_id: str) -> bool:
    """False when the row is gone (e.g. pruned after a long stall), so the caller re-registers."""
    stmt = update(Worker).where(Worker.id == worker_id).values(last_seen_at=utcnow())
    return session.execute(stmt).rowcount == 1


def unregister(session: Session, worker_id: str) -> None:
    session.execute(delete(Worker).where(Worker.id == worker_id))


def live_models(session: Session, ttl_seconds: float) -> list[ModelInfo]:
    cutoff = utcnow() - timedelta(seconds=ttl_seconds)
    rows = session.execute(
        select(
            Worker.model,
            func.count(),
            func.sum(Worker.max_batch_size),
        )
        .where(Worker.last_seen_at >= cutoff)
        .group_by(Worker.model)
        .order_by(Worker.model)
    ).all()
    engines = session.execute(
        select(Worker.model, Worker.engine).where(Worker.last_seen_at >= cutoff).distinct()
    ).all()
    by_model: dict[str, list[str]] = {}
    for model, engine in engines:
        by_model.setdefault(model, []).append(engine)
    return [
        ModelInfo(model=m, workers=int(n), engines=sorted(by_model.get(m, [])), capacity=int(cap or 0))
        for m, n, cap in rows
    ]


def live_worker_exists(model: str, ttl_seconds: float) -> Exists:
    """EXISTS(a worker serving `model` heartbeat within the TTL), to select beside other
    values in one round trip."""
    cutoff = utcnow() - timedelta(seconds=ttl_seconds)
    return select(Worker.id).where(Worker.model == model, Worker.last_seen_at >= cutoff).exists()


def is_live(session: Session, model: str, ttl_seconds: float) -> bool:
    return bool(session.scalar(select(live_worker_exists(model, ttl_seconds))))


def record_cold_start(session: Session, model: str, seconds: float) -> None:
    """The model's cold start is now `seconds`: the last measured is the one that counts,
    as a new release or node type changes it."""
    stmt = upsert_insert(session.get_bind(), ModelColdStart).values(
        model=model, seconds=seconds, measured_at=utcnow())
    session.execute(stmt.on_conflict_do_update(
        index_elements=[ModelColdStart.model],
        set_={"seconds": stmt.excluded.seconds, "measured_at": stmt.excluded.measured_at}))


def cold_start_seconds(model: str) -> ScalarSelect[float]:
    """The model's last cold start (NULL: never measured), to select beside other values."""
    return select(ModelColdStart.seconds).where(ModelColdStart.model == model).scalar_subquery()


def cold_starts(session: Session) -> dict[str, float]:
    return {row.model: row.seconds for row in session.execute(
        select(ModelColdStart.model, ModelColdStart.seconds))}
