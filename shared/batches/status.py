"""Batch status values (OpenAI's) and the moves between them that the system allows.

Every write of a batch's status is a named verb in shared/batches/transitions.py, whose
guarded UPDATE names the source states this table allows for its target, so two processes
never both make a move.
"""

from __future__ import annotations

from enum import StrEnum


class BatchStatus(StrEnum):
    validating = "validating"
    in_progress = "in_progress"
    finalizing = "finalizing"
    completed = "completed"
    failed = "failed"
    expired = "expired"
    cancelling = "cancelling"
    cancelled = "cancelled"


# Not yet ended: a process has work to do on it, and its input file is in use.
ACTIVE: frozenset[BatchStatus] = frozenset({
    BatchStatus.validating, BatchStatus.in_progress, BatchStatus.finalizing,
    BatchStatus.cancelling,
})
TERMINAL: frozenset[BatchStatus] = frozenset(BatchStatus) - ACTIVE

# A batch row is inserted validating.
CREATED_AS: frozenset[BatchStatus] = frozenset({BatchStatus.validating})

# target status -> statuses it may be entered from
ALLOWED_FROM: dict[BatchStatus, frozenset[BatchStatus]] = {
    BatchStatus.in_progress: frozenset({BatchStatus.validating}),
    BatchStatus.finalizing: frozenset({BatchStatus.in_progress}),
    BatchStatus.completed: frozenset({BatchStatus.finalizing}),
    # its file did not validate, or its work kept failing, whatever it was doing
    BatchStatus.failed: ACTIVE,
    BatchStatus.expired: frozenset({BatchStatus.in_progress}),
    BatchStatus.cancelling: frozenset({BatchStatus.validating, BatchStatus.in_progress}),
    BatchStatus.cancelled: frozenset({BatchStatus.cancelling}),
}
