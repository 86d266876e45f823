"""The one sweeper: reaps lapsed leases and expires overdue jobs, for every model.

Every GPU worker and control process starts one, but only the holder of a Postgres
advisory lock sweeps (shared/exclusive.py), so exactly one process does it at a time.

Lost broker messages need no re-send: workers claim queued jobs from Postgres and look
there on their own every `VLMQ_CLAIM_POLL_SECONDS`, so a job whose message never arrived
is claimed anyway.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.exclusive import ExclusiveLoop
from shared.jobs import lifecycle
from shared.jobs.lifecycle import RetryPolicy

log = logging.getLogger(__name__)

# pg_try_advisory_lock key: any constant; "vlmq" in ASCII.
SWEEPER_LOCK_KEY = 0x766C6D71


class Sweeper(ExclusiveLoop):
    name = "sweeper"

    def __init__(self, engine: Engine, sessions: sessionmaker[Session], policy: RetryPolicy,
                 period_seconds: float) -> None:
        super().__init__(engine, SWEEPER_LOCK_KEY, period_seconds)
        self.sessions = sessions
        self.policy = policy

    def work(self) -> None:
        self.sweep()

    def sweep(self) -> tuple[int, int]:
        """One pass; returns (reaped, expired). Public so tests can drive it."""
        with self.sessions.begin() as session:
            reaped = lifecycle.reap_lapsed(session, self.policy)
            expired = lifecycle.expire_overdue(session)
        if reaped or expired:
            log.warning("sweeper: %d lapsed jobs requeued or failed, %d expired", reaped, expired)
        return reaped, expired
