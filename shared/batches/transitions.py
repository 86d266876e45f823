"""Every write of a batch's status, one named verb each.

Each verb is one guarded UPDATE naming the source states VERBS gives it (a subset of the
table in status.py) and returns whether the batch moved: False when another process (or
the client) moved it first. Verbs flush and leave the commit to their caller, so a batch's
end and its webhook delivery row commit together.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from shared.batches.status import ACTIVE, ALLOWED_FROM, CREATED_AS, BatchStatus
from shared.models import Batch

S = BatchStatus


@dataclass(frozen=True)
class Move:
    sources: frozenset[BatchStatus]
    target: BatchStatus


# verb -> the states it may leave and the one it enters.
VERBS: dict[str, Move] = {
    "start": Move(frozenset({S.validating}), S.in_progress),
    "fail_validation": Move(frozenset({S.validating}), S.failed),
    "finalize": Move(frozenset({S.in_progress}), S.finalizing),
    "complete": Move(frozenset({S.finalizing}), S.completed),
    "fail": Move(ACTIVE, S.failed),
    "expire": Move(frozenset({S.in_progress}), S.expired),
    "cancel": Move(frozenset({S.validating, S.in_progress}), S.cancelling),
    "finish_cancel": Move(frozenset({S.cancelling}), S.cancelled),
}
for _verb, _move in VERBS.items():
    assert _move.sources <= ALLOWED_FROM[_move.target], f"{_verb} leaves the table"


def created(**columns: Any) -> Batch:
    """A new batch, validating: its input file is checked before any line runs."""
    batch = Batch(status=BatchStatus.validating, **columns)
    assert batch.status in CREATED_AS
    return batch


def _move(session: Session, verb: str, batch_id: str, **values: Any) -> bool:
    move = VERBS[verb]
    return bool(session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status.in_(sorted(move.sources)))
        .values(status=move.target, **values)
        .execution_options(synchronize_session=False)
    ).rowcount)


def start(session: Session, batch_id: str, *, total: int, model: str | None,
          now: datetime) -> bool:
    """validating -> in_progress: the file validated; its `total` lines are to expand."""
    return _move(session, "start", batch_id, in_progress_at=now, total=total, model=model)


def fail_validation(session: Session, batch_id: str, *, errors: list[dict[str, Any]],
                    now: datetime) -> bool:
    """validating -> failed: the input file did not validate (no line ever ran)."""
    return _move(session, "fail_validation", batch_id, failed_at=now, errors=errors)


def finalize(session: Session, batch_id: str, *, now: datetime) -> bool:
    """in_progress -> finalizing: every line has ended; the output files are next."""
    return _move(session, "finalize", batch_id, finalizing_at=now)


def complete(session: Session, batch_id: str, *, now: datetime,
             output_file_id: str | None, error_file_id: str | None) -> bool:
    """finalizing -> completed, with its output and error files."""
    return _move(session, "complete", batch_id, completed_at=now,
                 output_file_id=output_file_id, error_file_id=error_file_id)


def fail(session: Session, batch_id: str, *, now: datetime, errors: list[dict[str, Any]],
         output_file_id: str | None = None, error_file_id: str | None = None) -> bool:
    """Any state not yet ended -> failed: its work kept failing or its input went away;
    the files (when they could be written) hold what ran."""
    return _move(session, "fail", batch_id, failed_at=now, errors=errors,
                 output_file_id=output_file_id, error_file_id=error_file_id)


def expire(session: Session, batch_id: str, *, now: datetime,
           output_file_id: str | None, error_file_id: str | None) -> bool:
    """in_progress -> expired: the completion window ended (its lines were expired)."""
    return _move(session, "expire", batch_id, expired_at=now,
                 output_file_id=output_file_id, error_file_id=error_file_id)


def cancel(session: Session, batch_id: str, *, now: datetime) -> bool:
    """validating or in_progress -> cancelling: the client asked; lines stop next."""
    return _move(session, "cancel", batch_id, cancelling_at=now)


def finish_cancel(session: Session, batch_id: str, *, now: datetime,
                  output_file_id: str | None, error_file_id: str | None) -> bool:
    """cancelling -> cancelled, with the files of what ran."""
    return _move(session, "finish_cancel", batch_id, cancelled_at=now,
                 output_file_id=output_file_id, error_file_id=error_file_id)
