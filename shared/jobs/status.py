"""Job status values and the moves between them that the system allows.

Every write of a job's status is a named verb in shared/jobs/transitions.py; each verb's
guarded statement names the source states this table allows for its target, and nothing
else writes the column (tests/unit/test_status_writes.py checks both).
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    expired = "expired"


TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled, JobStatus.expired}
)

# Postgres NOTIFY channel (see migration 0005): the payload is the id of a job that just ended.
TERMINAL_CHANNEL = "vlmq_job_terminal"

# The states a job row is inserted in: queued, or failed for a batch line that cannot run.
CREATED_AS: frozenset[JobStatus] = frozenset({JobStatus.queued, JobStatus.failed})

# target status -> statuses it may be entered from
ALLOWED_FROM: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.running: frozenset({JobStatus.queued}),
    JobStatus.succeeded: frozenset({JobStatus.running}),
    # queued: the attempt's worker reports a permanent failure after the reaper requeued
    # the same attempt (fencing lets it through; the failure would recur anyway).
    JobStatus.failed: frozenset({JobStatus.queued, JobStatus.running}),
    JobStatus.cancelled: frozenset({JobStatus.queued, JobStatus.running}),
    # running: only when the job's batch expires (its lines end as OpenAI's do); a job's
    # own deadline applies to queued jobs alone.
    JobStatus.expired: frozenset({JobStatus.queued, JobStatus.running}),
    JobStatus.queued: frozenset({JobStatus.running}),
}
