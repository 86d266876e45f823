"""One thread writes every finished attempt, many per transaction.

Outcomes arrive from the engine's callbacks and the image-preparing threads; the recorder
takes whatever has accumulated and writes it in one transaction (one UPDATE for all the
successes on Postgres). While the database is unreachable it keeps the outcomes and
retries; if the jobs' leases lapse meanwhile, the fenced writes are refused and the
sweeper's requeue stands.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from shared.jobs import lifecycle
from shared.jobs.lifecycle import Outcome, RetryPolicy
from shared.outages import log_failure
from worker.inflight import InFlight
from worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

_MAX_BATCH = 1000


@dataclass(frozen=True)
class Dropped:
    """A job the worker let go without writing anything (cancelled or taken over)."""

    job_id: uuid.UUID


class Recorder:
    def __init__(self, sessions: sessionmaker[Session], policy: RetryPolicy, inflight: InFlight,
                 metrics: WorkerMetrics) -> None:
        self.sessions = sessions
        self.policy = policy
        self.inflight = inflight
        self.metrics = metrics
        self._queue: queue.Queue[Outcome | Dropped] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, outcome: Outcome | Dropped) -> None:
        self._queue.put(outcome)

    def stop(self, timeout: float = 30) -> None:
        """Writes what is queued (retrying up to `timeout`), then ends."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            try:
                batch = [self._queue.get(timeout=0.2)]
            except queue.Empty:
                continue
            while len(batch) < _MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write_until_stored(batch)

    def _write_until_stored(self, batch: list[Outcome | Dropped]) -> None:
        outcomes = [o for o in batch if not isinstance(o, Dropped)]
        delay = 0.2
        while outcomes:
            try:
                with self.sessions() as session:
                    recorded = lifecycle.record(session, outcomes, self.policy)
                    session.commit()
                self._count(recorded)
                break
            except Exception as exc:
                log_failure(log, "writing %d job outcomes failed; retrying in %.1fs", exc,
                            len(outcomes), delay)
                if self._stop.wait(delay) and delay >= 5:
                    log.error("giving up on %d job outcomes at shutdown; their leases will "
                              "lapse and the jobs run again", len(outcomes))
                    break
                delay = min(delay * 2, 5)
        self.inflight.remove(o.job_id for o in batch)

    def _count(self, recorded: lifecycle.Recorded) -> None:
        for outcome in ("succeeded", "retried", "failed", "discarded"):
            ids = getattr(recorded, outcome)
            if ids:
                self.metrics.jobs.labels(outcome=outcome).inc(len(ids))
        if recorded.discarded:
            log.info("%d results discarded: the jobs were cancelled or taken over meanwhile",
                     len(recorded.discarded))
