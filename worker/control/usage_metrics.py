"""The usage ledger as Prometheus counters by tenant and model, served by the control
process beside the queue's metrics: `vlmq_usage_<counter>_total{tenant,model}` for each of
the ledger's counters (accepted, succeeded, ..., engine_seconds).

The ledger only grows, so its sums are counters, and `increase()` over them gives usage in
any range Prometheus holds. They are read on scrape with a short cache, as the queue's
are, and every control process exports the same values (take `max` over instances). A
write counts at the hour of its event, which is now, so only the last hours can still
change: hours older than SETTLED are summed once and kept, and each read sums the recent
ones alone, however long the ledger grows.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from shared.outages import log_failure
from shared.timeutil import utcnow
from shared.usage import report
from shared.usage.ledger import COUNTERS, hour_of
from worker.control.queue_metrics import CACHE_SECONDS

log = logging.getLogger(__name__)

# Past this, an hour of the ledger no longer changes: its writes happened at most a
# transaction's length after the hour ended. Two hours leave room for clock skew.
SETTLED = timedelta(hours=2)

Totals = dict[tuple[str, str], report.Counters]

_HELP = {
    "accepted": "Jobs created (any door, a batch's lines too)",
    "succeeded": "Jobs that succeeded",
    "failed": "Jobs that failed (batch lines refused at expansion too)",
    "cancelled": "Jobs cancelled",
    "expired": "Jobs that expired before they ran",
    "images": "Accepted jobs with an image",
    "prompt_tokens": "Prompt tokens of the jobs that succeeded",
    "image_tokens": "Of the prompt tokens, the images' (where the engine tells them apart)",
    "completion_tokens": "Tokens generated for the jobs that succeeded",
    "engine_seconds": "Engine step wall time, each step's shared among the jobs in it",
}
assert _HELP.keys() == set(COUNTERS)


def _add(into: Totals, more: Totals) -> Totals:
    for key, counters in more.items():
        into[key] = into[key] + counters if key in into else counters
    return into


class UsageCollector(Collector):
    def __init__(self, sessions: sessionmaker[Session], cache_seconds: float = CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = utcnow) -> None:
        self.sessions = sessions
        self.cache_seconds = cache_seconds
        self.clock = clock
        self.now = now
        self._lock = threading.Lock()
        self._settled: Totals = {}
        self._settled_before: datetime | None = None  # hours before this are in _settled
        self._totals: Totals | None = None
        self._read_at = -math.inf

    def describe(self) -> Iterator[Metric]:
        return iter(_families().values())

    def collect(self) -> Iterator[Metric]:
        families = _families()
        with self._lock:
            totals = self._read()
        families["up"].add_metric([], 0.0 if totals is None else 1.0)
        for (tenant, model), counters in sorted((totals or {}).items()):
            for name in COUNTERS:
                families[name].add_metric([tenant, model], getattr(counters, name))
        return iter(families.values())

    def _read(self) -> Totals | None:
        """The cached totals, or a fresh read when older than the cache; None when the
        ledger cannot be read (`vlmq_usage_stats_up` 0, no stale numbers)."""
        if self._totals is not None and self.clock() - self._read_at < self.cache_seconds:
            return self._totals
        try:
            self._totals = self._read_ledger()
        except Exception as exc:
            log_failure(log, "usage metrics: reading the usage ledger failed", exc)
            self._totals = None
        self._read_at = self.clock()
        return self._totals

    def _read_ledger(self) -> Totals:
        settle_before = hour_of(self.now() - SETTLED)
        with self.sessions() as session:
            if self._settled_before is None or settle_before > self._settled_before:
                newly = report.per_tenant_and_model(session, since=self._settled_before,
                                                    before=settle_before)
                _add(self._settled, newly)
                self._settled_before = settle_before
            recent = report.per_tenant_and_model(session, since=self._settled_before)
        return _add(dict(self._settled), recent)


def _families() -> dict[str, Metric]:
    labels = ["tenant", "model"]
    families: dict[str, Metric] = {
        name: CounterMetricFamily(f"vlmq_usage_{name}", f"{text}, by tenant and model, from "
                                  "the usage ledger", labels=labels)
        for name, text in _HELP.items()
    }
    families["up"] = GaugeMetricFamily(
        "vlmq_usage_stats_up", "1 when the last read of the usage ledger succeeded; 0 leaves "
        "the vlmq_usage_* counters out")
    return families
