"""Wakes long polls (`GET /v1/jobs/{id}?wait=`) when their job ends.

A waiting request holds an asyncio.Event and nothing else: no thread and no database
connection. One task per API process sets those events:

- Postgres: one connection LISTENs on the channel the jobs table's trigger NOTIFYs with
  the id of every job that reaches a terminal status (migration 0005).
- Both: every `long_poll_fallback_seconds` (0.2 s on SQLite, which has no NOTIFY) one
  query checks all waited-on ids and wakes those already terminal. On Postgres this
  covers notifications missed while the listener was reconnecting; the check also runs
  right after each (re)LISTEN, so a job that ended while nobody listened wakes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterator, Sequence

import psycopg
from sqlalchemy import Engine, select

from shared.db import is_sqlite, libpq_url
from shared.jobs.status import TERMINAL, TERMINAL_CHANNEL
from shared.models import Job
from shared.settings import Settings

log = logging.getLogger(__name__)

SQLITE_POLL_SECONDS = 0.2
_RECONNECT_MAX_SECONDS = 5.0
_IDS_PER_QUERY = 500
# A listener whose server vanished without closing the socket notices within about a minute.
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
               "keepalives_count": 3}


class TerminalWatch:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._settings = settings
        self._engine = engine
        self._waiters: dict[uuid.UUID, set[asyncio.Event]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.listening = False  # whether LISTEN is in force right now (Postgres)

    @property
    def waiting(self) -> int:
        return sum(len(events) for events in self._waiters.values())

    @contextlib.contextmanager
    def watch(self, job_id: uuid.UUID) -> Iterator[asyncio.Event]:
        """An event set when `job_id` may have ended. Take it before reading the job, and
        clear it before each read, so an end between the read and the wait is not lost."""
        event = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            events = self._waiters.get(job_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiters[job_id]

    def wake(self, job_id: uuid.UUID) -> None:
        for event in self._waiters.get(job_id, ()):
            event.set()

    def start(self) -> None:
        if is_sqlite(self._settings):
            self._tasks.append(asyncio.create_task(self._check_every(SQLITE_POLL_SECONDS)))
            return
        self._tasks.append(asyncio.create_task(self._listen()))
        period = self._settings.long_poll_fallback_seconds
        self._tasks.append(asyncio.create_task(self._check_every(period)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        # Whoever still waits answers with the job as it stands.
        for job_id in list(self._waiters):
            self.wake(job_id)

    async def _listen(self) -> None:
        delay = 0.2
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    libpq_url(self._settings), autocommit=True, connect_timeout=5, **_KEEPALIVES
                )
                async with conn:
                    await conn.execute(f"LISTEN {TERMINAL_CHANNEL}")
                    self.listening = True
                    delay = 0.2
                    await self.check()
                    async for note in conn.notifies():
                        self._wake_payload(note.payload)
            except Exception as exc:  # psycopg.Error or OSError, mostly: keep listening
                log.warning("long-poll listener lost the database (%s); reconnecting in %.1fs",
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__, delay)
            finally:
                self.listening = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX_SECONDS)

    def _wake_payload(self, payload: str) -> None:
        try:
            job_id = uuid.UUID(payload)
        except ValueError:
            return
        self.wake(job_id)

    async def _check_every(self, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            await self.check()

    async def check(self) -> None:
        """Wakes the waiters of every waited-on job that is already terminal."""
        if not self._waiters:
            return
        ids = list(self._waiters)
        try:
            ended = await asyncio.to_thread(self._terminal_among, ids)
        except Exception as exc:  # the database is down: the next check tries again
            log.debug("long-poll check failed: %s", exc)
            return
        for job_id in ended:
            self.wake(job_id)

    def _terminal_among(self, ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
        ended: list[uuid.UUID] = []
        with self._engine.connect() as conn:
            for start in range(0, len(ids), _IDS_PER_QUERY):
                chunk = ids[start:start + _IDS_PER_QUERY]
                ended.extend(conn.scalars(
                    select(Job.id).where(Job.id.in_(chunk), Job.status.in_(TERMINAL))
                ))
        return ended
