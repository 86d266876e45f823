"""The task events of the job verbs (shared/jobs/events.py) reach the broker only once their
transaction commits, in the batched form Celery's own receiver (Flower's) unpacks: real
Postgres, real Redis, and Celery's EventReceiver listening as Flower does."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.jobs import events, transitions
from shared.jobs.lifecycle import Result, Succeeded
from shared.jobs.status import JobStatus
from shared.queue import make_celery
from shared.settings import Settings
from shared.timeutil import utcnow
from tests.helpers.services import REDIS_URL
from tests.unit.test_job_transitions import insert, seed


class Captured:
    """Every task event on the broker, as Celery's receiver hands them to Flower."""

    def __init__(self, settings: Settings) -> None:
        self.app = make_celery(settings)
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._capture, daemon=True)
        self._thread.start()

    def _capture(self) -> None:
        with self.app.connection_for_read() as conn:
            self._receiver = self.app.events.Receiver(conn, handlers={"*": self._on_event})
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def _on_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, job_id: uuid.UUID) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e.get("uuid") == str(job_id)]

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=5)


@pytest.fixture()
def sent() -> Iterator[tuple[events.TaskEventSender, Captured]]:
    settings = Settings(broker_url=REDIS_URL, queue_prefix=f"vlmqev{uuid.uuid4().hex[:6]}")
    captured = Captured(settings)
    sender = events.start_sending(make_celery(settings), "vlmq-m@test", on=True)
    assert sender is not None
    try:
        # Redis hands events only to subscribers already listening: wait until one arrives.
        probe = uuid.uuid4()
        deadline = time.monotonic() + 30
        while not captured.of(probe):
            assert time.monotonic() < deadline, "the receiver never saw an event"
            sender.emit([("task-received", str(probe), time.time(), {})])
            time.sleep(0.2)
        yield sender, captured
    finally:
        events.stop_sending(sender)
        captured.stop()


def _types(captured: Captured, job_id: uuid.UUID, count: int) -> list[str]:
    deadline = time.monotonic() + 10
    while len(captured.of(job_id)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return [e["type"] for e in captured.of(job_id)]


def test_moves_send_task_events_once_committed(
    pg_sessions: sessionmaker[Session], sent: tuple[events.TaskEventSender, Captured]
) -> None:
    _, captured = sent
    seed(pg_sessions)
    won, lost, cancelled = (insert(pg_sessions, JobStatus.queued, attempts=0, batch_id=None)
                            for _ in range(3))
    with pg_sessions.begin() as session:
        claimed = {job.id: job.attempt for job in transitions.claim_batch(session, "m", 10, 30)}
    for job_id in (won, lost, cancelled):
        assert _types(captured, job_id, 2) == ["task-received", "task-started"]
    received = captured.of(won)[0]
    assert received["name"] == "vlmq.job.m" and received["hostname"] == "vlmq-m@test"
    assert received["args"] == "('p',)" and "'tenant': 't'" in received["kwargs"]

    # Rolled back: the database kept nothing, so Flower must not see a failure.
    with pytest.raises(RuntimeError), pg_sessions.begin() as session:
        assert transitions.fail(session, lost, claimed[lost], code="bad", message="no",
                                now=utcnow())
        raise RuntimeError("the transaction rolls back")

    time.sleep(1)
    assert _types(captured, lost, 2) == ["task-received", "task-started"]

    with pg_sessions.begin() as session:
        transitions.succeed_many(session, [Succeeded(won, claimed[won],
                                                     Result("a cat", 3, 2, "stop"))])
        transitions.fail(session, lost, claimed[lost], code="image_corrupted",
                         message="the bytes changed", now=utcnow())
        transitions.cancel(session, cancelled, code="cancelled", message="by the client",
                           now=utcnow())
    assert _types(captured, won, 3)[-1] == "task-succeeded"
    succeeded = captured.of(won)[-1]
    assert succeeded["result"] == "'a cat'" and succeeded["runtime"] >= 0
    assert _types(captured, lost, 3)[-1] == "task-failed"
    assert captured.of(lost)[-1]["exception"] == "image_corrupted: the bytes changed"
    assert _types(captured, cancelled, 3)[-1] == "task-revoked"
    assert captured.of(cancelled)[-1]["name"] == "vlmq.job.m"
