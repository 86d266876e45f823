"""The task events (shared/task_events.py) of the status moves in transitions.py.

A move notes its events on the session that makes it; they go to the process's sender when
that session's transaction commits, and are dropped when it rolls back, so Flower never
shows a move the database did not keep. A process without a sender (a CLI, a test) notes
nothing: `note` returns at once.

In Celery's terms a job is a task whose id is the job's id, named `vlmq.job.<model>`: a
claim is `task-received` then `task-started`, a result `task-succeeded`, a retried attempt
`task-retried`, a failure `task-failed`, a cancel or expiry `task-revoked`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from celery import Celery
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from shared.task_events import TaskEvent, TaskEventSender

TASK_NAME_PREFIX = "vlmq.job."
PROMPT_CHARS = 40  # of a job's prompt shown as its task's args
RESULT_CHARS = 200
_KEY = "vlmq_task_events"

_sender: TaskEventSender | None = None


def install(sender: TaskEventSender | None) -> None:
    """This process's sender from now on (None: note nothing)."""
    global _sender
    _sender = sender


def start_sending(celery: Celery, hostname: str, on: bool) -> TaskEventSender | None:
    """This process's sender, started and installed; None with events off
    (`VLMQ_TASK_EVENTS=false`)."""
    if not on:
        return None
    sender = TaskEventSender(celery, hostname)
    sender.start()
    install(sender)
    return sender


def stop_sending(sender: TaskEventSender | None) -> None:
    """Sends what is noted, then stops."""
    if sender is None:
        return
    if _sender is sender:
        install(None)
    sender.stop()


def enabled() -> bool:
    return _sender is not None


def task_name(model: str) -> str:
    return f"{TASK_NAME_PREFIX}{model}"


def summary(model: str, tenant: str, prompt_head: str | None, width: int | None,
            height: int | None, image_url: str | None = None) -> dict[str, Any]:
    """What a task shows besides its state: its name, and its args and kwargs as Celery
    sends them (reprs)."""
    image = f"{width}x{height}" if width and height else (image_url or "")[:60] or None
    return {"name": task_name(model), "args": repr(((prompt_head or "")[:PROMPT_CHARS],)),
            "kwargs": repr({"tenant": tenant, "image": image})}


def note(session: Session, kind: str, job_id: uuid.UUID, at: datetime | None = None,
         **fields: Any) -> None:
    if _sender is None:
        return
    stamp = at.timestamp() if at is not None else time.time()
    session.info.setdefault(_KEY, []).append((kind, str(job_id), stamp, fields))


def note_many(session: Session, events: Iterable[TaskEvent]) -> None:
    if _sender is None:
        return
    session.info.setdefault(_KEY, []).extend(events)


def error_text(code: str, message: str | None) -> str:
    return f"{code}: {message}" if message else code


def result_text(text: str) -> str:
    """A result as a task's result shows it: its repr, cut as Celery's saferepr cuts."""
    return repr(text[:RESULT_CHARS] + ("..." if len(text) > RESULT_CHARS else ""))


@event.listens_for(Session, "after_commit")
def _send_committed(session: Session) -> None:
    noted = session.info.pop(_KEY, None)
    if noted and _sender is not None:
        _sender.emit(noted)


@event.listens_for(Session, "after_transaction_end")
def _drop_uncommitted(session: Session, transaction: SessionTransaction) -> None:
    # After a commit `after_commit` has taken them already; what is left was rolled back.
    if transaction.parent is None:
        session.info.pop(_KEY, None)
