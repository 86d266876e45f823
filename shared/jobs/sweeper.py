"""The one sweeper: reaps lapsed leases and expires overdue jobs, for every model.

Every GPU worker and control process starts one, but only the holder of a Postgres
advisory lock sweeps, so exactly one process does it at a time; when that process dies
its connection closes, the lock is released and another process takes over at its next
try. On SQLite (the embedded setup, one worker) the sweeper simply runs.

The lock lives in one database session, so it is only as alive as that connection: when
Postgres restarts or the backend is terminated the lock is gone, and a process that kept
believing it held it would sweep beside the new holder (harmless, the updates are
guarded) while reporting the wrong thing. The holder therefore asks Postgres every period
whether its own backend still holds the lock, and starts over when it does not.

Lost broker messages need no re-send: workers claim queued jobs from Postgres and look
there on their own every `VLMQ_CLAIM_POLL_SECONDS`, so a job whose message never arrived
is claimed anyway.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session, sessionmaker

from shared.jobs import lifecycle
from shared.jobs.lifecycle import RetryPolicy
from shared.outages import log_failure

log = logging.getLogger(__name__)

# pg_try_advisory_lock key: any constant; "vlmq" in ASCII.
SWEEPER_LOCK_KEY = 0x766C6D71

# A bigint advisory key shows in pg_locks split in two: high half as classid, low half as
# objid, with objsubid 1. Asking pg_locks (not just `SELECT 1`) matters: SQLAlchemy
# reconnects an invalidated Connection on its next use, and a fresh backend answers
# `SELECT 1` without holding any lock.
_STILL_HELD = text("""
    SELECT EXISTS (
        SELECT 1 FROM pg_locks
        WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
          AND classid::bigint = :classid AND objid::bigint = :objid AND objsubid = 1
    )
""")


class Sweeper:
    def __init__(self, engine: Engine, sessions: sessionmaker[Session], policy: RetryPolicy,
                 period_seconds: float) -> None:
        self.engine = engine
        self.sessions = sessions
        self.policy = policy
        self.period = period_seconds
        self._lock_conn: Connection | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sweeper", daemon=True)

    @property
    def holds_lock(self) -> bool:
        return self._lock_conn is not None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._release()

    def _run(self) -> None:
        # The first try is at once, so a process that starts alone sweeps without delay.
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.period)

    def tick(self) -> bool:
        """One period: make sure of the lock, then sweep if held. Returns whether it swept."""
        try:
            if not self._acquire():
                return False
        except Exception as exc:
            # Postgres is unreachable: the lock (if it was ours) is gone with the session.
            log_failure(log, "sweeper lock unavailable; retrying in %.1fs", exc, self.period)
            self._release()
            return False
        try:
            self.sweep()
        except Exception as exc:
            # The lock is kept: the next period checks whether its connection survived.
            log_failure(log, "sweep failed; retrying in %.1fs", exc, self.period)
            return False
        return True

    def _acquire(self) -> bool:
        if self.engine.dialect.name != "postgresql":
            return True
        if self._lock_conn is not None:
            if self._still_held(self._lock_conn):
                return True
            log.warning("the sweeper lock was lost with its database session; taking it again")
            self._release()
        conn = self.engine.connect()
        try:
            taken = conn.execute(text("SELECT pg_try_advisory_lock(:key)"),
                                 {"key": SWEEPER_LOCK_KEY}).scalar()
            conn.commit()  # session-level lock: it outlives this transaction
        except Exception:
            conn.close()
            raise
        if not taken:
            conn.close()
            return False
        self._lock_conn = conn
        log.info("this process is the sweeper now")
        return True

    @staticmethod
    def _still_held(conn: Connection) -> bool:
        try:
            held = bool(conn.execute(_STILL_HELD, {
                "classid": SWEEPER_LOCK_KEY >> 32, "objid": SWEEPER_LOCK_KEY & 0xFFFFFFFF,
            }).scalar())
            conn.commit()  # never left idle in a transaction: it would pin old row versions
        except Exception:
            log.debug("sweeper lock connection failed its check", exc_info=True)
            return False
        return held

    def _release(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        if conn is not None:
            try:
                # Invalidated, not returned to the pool: closing the database session is
                # what ends the advisory lock.
                conn.invalidate()
                conn.close()
            except Exception:
                log.debug("closing the sweeper lock connection failed", exc_info=True)

    def sweep(self) -> tuple[int, int]:
        """One pass; returns (reaped, expired). Public so tests can drive it."""
        with self.sessions.begin() as session:
            reaped = lifecycle.reap_lapsed(session, self.policy)
            expired = lifecycle.expire_overdue(session)
        if reaped or expired:
            log.warning("sweeper: %d lapsed jobs requeued or failed, %d expired", reaped, expired)
        return reaped, expired
