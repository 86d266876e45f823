"""Queue metrics per model and priority, read from Postgres when Prometheus scrapes the
control process: depth, running jobs, the oldest queued job's age, jobs past their deadline,
recent throughput, live workers, each model's last cold start, and the backlog in seconds an
autoscaler can act on.

They live here because the control process is the one process that always runs: a model
whose workers are all gone still has its queue measured, which is when it matters most.
They are read on scrape, not by a thread of their own, so nothing queries while nobody
scrapes; a short cache makes several scrapers (a Prometheus HA pair, a curl beside it)
share one read. Each control process exports the same values, so dashboards and alerts
take `max` over instances.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from shared import workers_repo
from shared.jobs import repo as jobs_repo
from shared.outages import log_failure
from shared.timeutil import as_utc, utcnow

log = logging.getLogger(__name__)

# Throughput is the jobs that succeeded in this window, per second: long enough to smooth
# over batch boundaries, short enough to follow a worker joining or leaving. The same
# window as a queued job's ETA (shared/jobs/repo.py queue_estimate).
WINDOW_SECONDS = 300.0
# The longest a scrape may be answered from the previous read.
CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class Snapshot:
    """One read of the queue: what every family below is built from."""

    classes: list[jobs_repo.ClassBacklog]
    succeeded: dict[str, int]  # per model, within the window
    workers: dict[str, int]  # live workers per model
    cold_starts: dict[str, float]  # each model's last measured cold start


def read_snapshot(sessions: sessionmaker[Session], worker_ttl_seconds: float,
                  window_seconds: float) -> Snapshot:
    now = utcnow()
    with sessions() as session:
        classes = jobs_repo.backlogs_by_priority(session, now)
        succeeded = jobs_repo.succeeded_since(session, now - timedelta(seconds=window_seconds))
        live = workers_repo.live_models(session, worker_ttl_seconds)
        cold_starts = workers_repo.cold_starts(session)
    return Snapshot(classes, succeeded, {m.model: m.workers for m in live}, cold_starts)


def backlog_seconds(queued: int, per_second: float) -> float:
    """How long the queued jobs take at the recent rate: 0 with nothing queued, +Inf with jobs
    queued and none succeeding (no worker, or all of them stuck), which no autoscaler target
    or alert threshold can mistake for a short queue."""
    if queued == 0:
        return 0.0
    if per_second <= 0:
        return math.inf
    return queued / per_second


class QueueCollector(Collector):
    """The prometheus_client collector behind the families named in `_families`."""

    def __init__(self, sessions: sessionmaker[Session], worker_ttl_seconds: float,
                 window_seconds: float = WINDOW_SECONDS, cache_seconds: float = CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sessions = sessions
        self.worker_ttl_seconds = worker_ttl_seconds
        self.window_seconds = window_seconds
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._read_at = -math.inf
        # Every model and (model, priority) reported so far keeps a series, at 0 once it
        # drains, so a graph falls to 0 instead of stopping at its last value. At most ten
        # priorities per model, so this stays small.
        self._models: set[str] = set()
        self._classes: set[tuple[str, int]] = set()

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Lets the registry check names at registration without reading the database.
        return iter(_families().values())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = _families()
        # Scrapes arrive on threads of their own; one at a time reads and updates the sets.
        with self._lock:
            snapshot = self._read()
            families["up"].add_metric([], 0.0 if snapshot is None else 1.0)
            if snapshot is not None:
                self._add(families, snapshot)
        return iter(families.values())

    def _read(self) -> Snapshot | None:
        """The cached snapshot, or a fresh read when it is older than the cache; None when the
        database cannot be read (no stale numbers: `vlmq_queue_stats_up` says why they are gone)."""
        if self._snapshot is not None and self.clock() - self._read_at < self.cache_seconds:
            return self._snapshot
        try:
            self._snapshot = read_snapshot(self.sessions, self.worker_ttl_seconds,
                                           self.window_seconds)
        except Exception as exc:
            log_failure(log, "queue metrics: reading the queue failed", exc)
            self._snapshot = None
        self._read_at = self.clock()
        return self._snapshot

    def _add(self, families: dict[str, GaugeMetricFamily], snapshot: Snapshot) -> None:
        now = utcnow()
        by_class = {(c.model, c.priority): c for c in snapshot.classes}
        self._classes |= by_class.keys()
        self._models |= {c.model for c in snapshot.classes} | snapshot.workers.keys()
        queued: dict[str, int] = {}
        for model, priority in sorted(self._classes):
            c = by_class.get((model, priority))
            labels = [model, str(priority)]
            families["depth"].add_metric(labels, c.queued if c else 0)
            families["running"].add_metric(labels, c.running if c else 0)
            families["overdue"].add_metric(labels, c.overdue if c else 0)
            families["oldest"].add_metric(labels, _age(c.oldest_queued_at if c else None, now))
            queued[model] = queued.get(model, 0) + (c.queued if c else 0)
        for model in sorted(self._models):
            per_second = snapshot.succeeded.get(model, 0) / self.window_seconds
            families["throughput"].add_metric([model], per_second)
            families["backlog"].add_metric([model], backlog_seconds(queued.get(model, 0),
                                                                    per_second))
            families["workers"].add_metric([model], snapshot.workers.get(model, 0))
        for model, seconds in sorted(snapshot.cold_starts.items()):
            families["cold_start"].add_metric([model], seconds)


def _families() -> dict[str, GaugeMetricFamily]:
    by_class = ["model", "priority"]
    return {
        "depth": GaugeMetricFamily(
            "vlmq_queue_depth", "Jobs queued, by model and priority (0 runs first); batch "
            "lines included", labels=by_class),
        "running": GaugeMetricFamily(
            "vlmq_queue_running", "Jobs running, by model and priority", labels=by_class),
        "oldest": GaugeMetricFamily(
            "vlmq_queue_oldest_age_seconds", "Age of the oldest queued job, by model and "
            "priority; 0 when none waits", labels=by_class),
        "overdue": GaugeMetricFamily(
            "vlmq_queue_overdue", "Queued jobs past their deadline (max_queue_seconds); the "
            "sweeper expires them within a sweep, so a lasting count means it is not running",
            labels=by_class),
        "throughput": GaugeMetricFamily(
            "vlmq_queue_throughput_per_second", "Jobs that succeeded per second, by model, "
            f"over the last {WINDOW_SECONDS:.0f} seconds", labels=["model"]),
        "backlog": GaugeMetricFamily(
            "vlmq_queue_backlog_seconds", "Queued jobs divided by recent throughput, by "
            "model: 0 with none queued, +Inf with jobs queued and none succeeding",
            labels=["model"]),
        "workers": GaugeMetricFamily(
            "vlmq_workers_live", "Workers whose heartbeat is within VLMQ_WORKER_TTL_SECONDS, "
            "by model", labels=["model"]),
        "cold_start": GaugeMetricFamily(
            "vlmq_model_cold_start_seconds", "The model's last measured cold start, from a "
            "worker process's start to its first claim: how long a job queued while the "
            "model has no live worker waits at least", labels=["model"]),
        "up": GaugeMetricFamily(
            "vlmq_queue_stats_up", "1 when the last read of the queue from the database "
            "succeeded; 0 leaves the other vlmq_queue_* and vlmq_workers_live out"),
    }


def _age(moment: datetime | None, now: datetime) -> float:
    return max((now - as_utc(moment)).total_seconds(), 0.0) if moment else 0.0
