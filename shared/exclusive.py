"""A periodic loop that runs in exactly one process at a time, under a Postgres advisory lock.

Every process that may do the work starts one; only the holder of the lock does it, so one
process does it at a time. When that process dies its connection closes, the lock is
released and another process takes over at its next try. On SQLite (the embedded setup,
one process) the loop simply runs.

The lock lives in one database session, so it is only as alive as that connection: when
Postgres restarts or the backend is terminated the lock is gone, and a process that kept
believing it held it would work beside the new holder while reporting the wrong thing.
The holder therefore asks Postgres every period whether its own backend still holds the
lock, and starts over when it does not.

A holder whose host drops off the network closes nothing: Postgres would keep its silent
session, and the lock with it, until the kernel's TCP keepalive gives up (two hours by
default), and no one else would do the work meanwhile. So the lock's session asks the
server to probe it soon and often, and the lock passes to another process within some
15 seconds of its holder going silent.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Connection, Engine, text

from shared.outages import log_failure

log = logging.getLogger(__name__)

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


# The server's TCP keepalive for the lock's own session (settable per session; ignored on
# a Unix socket): the first probe after 5 s of silence, then every 2 s, dead after 3 unanswered;
# and data the holder never acknowledges counts as dead after 10 s.
_LOCK_SESSION = text("""
    SELECT set_config('tcp_keepalives_idle', '5', false),
           set_config('tcp_keepalives_interval', '2', false),
           set_config('tcp_keepalives_count', '3', false),
           set_config('tcp_user_timeout', '10000', false)
""")


class ExclusiveLoop:
    """Calls `work()` every `period` seconds while this process holds `lock_key`."""

    name = "exclusive loop"

    def __init__(self, engine: Engine, lock_key: int, period_seconds: float) -> None:
        self.engine = engine
        self.lock_key = lock_key
        self.period = period_seconds
        self._lock_conn: Connection | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    @property
    def holds_lock(self) -> bool:
        return self._lock_conn is not None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._release()

    def work(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        # The first try is at once, so a process that starts alone works without delay.
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.period)

    def tick(self) -> bool:
        """One period: make sure of the lock, then work if held. Returns whether it worked."""
        try:
            if not self._acquire():
                return False
        except Exception as exc:
            # Postgres is unreachable: the lock (if it was ours) is gone with the session.
            log_failure(log, "%s: lock unavailable; retrying in %.1fs", exc, self.name,
                        self.period)
            self._release()
            return False
        try:
            self.work()
        except Exception as exc:
            # The lock is kept: the next period checks whether its connection survived.
            log_failure(log, "%s failed; retrying in %.1fs", exc, self.name, self.period)
            return False
        return True

    def _acquire(self) -> bool:
        if self.engine.dialect.name != "postgresql":
            return True
        if self._lock_conn is not None:
            if self._still_held(self._lock_conn):
                return True
            log.warning("%s: the lock was lost with its database session; taking it again",
                        self.name)
            self._release()
        conn = self.engine.connect()
        try:
            taken = conn.execute(text("SELECT pg_try_advisory_lock(:key)"),
                                 {"key": self.lock_key}).scalar()
            if taken:  # the holder's session alone: the others try again each period
                conn.execute(_LOCK_SESSION)
            conn.commit()  # session-level lock: it outlives this transaction
        except Exception:
            conn.invalidate()  # closing its session ends a lock it may have taken
            conn.close()
            raise
        if not taken:
            conn.close()
            return False
        self._lock_conn = conn
        log.info("this process is the %s now", self.name)
        return True

    def _still_held(self, conn: Connection) -> bool:
        try:
            held = bool(conn.execute(_STILL_HELD, {
                "classid": self.lock_key >> 32, "objid": self.lock_key & 0xFFFFFFFF,
            }).scalar())
            conn.commit()  # never left idle in a transaction: it would pin old row versions
        except Exception:
            log.debug("%s: lock connection failed its check", self.name, exc_info=True)
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
                log.debug("%s: closing the lock connection failed", self.name, exc_info=True)
