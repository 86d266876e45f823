"""The control process's metrics, on VLMQ_METRICS_PORT when it is set: webhook delivery's
(worker/webhooks/metrics.py), batch work's, the queue's (worker/control/queue_metrics.py) and
the usage ledger's (worker/control/usage_metrics.py)."""

from __future__ import annotations

from dataclasses import fields

from prometheus_client import Counter
from sqlalchemy.orm import Session, sessionmaker

from shared.retention.sweeper import Swept
from worker.control.queue_metrics import QueueCollector
from worker.control.usage_metrics import UsageCollector
from worker.webhooks.metrics import WebhookMetrics


class ControlMetrics(WebhookMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.batch_lines = Counter(
            "vlmq_batch_lines_expanded", "Batch lines turned into jobs, by tenant",
            ["tenant"], registry=self.registry,
        )
        self.batches = Counter(
            "vlmq_batches_finished", "Batches that reached a final status, by status",
            ["status"], registry=self.registry,
        )
        self.retention_removed = Counter(
            "vlmq_retention_removed", "What the retention sweeper removed, by kind: images, "
            "jobs, batches, files, tombstones (rows deleted) and orphans (objects)",
            ["kind"], registry=self.registry,
        )
        self.retention_seconds = Counter(
            "vlmq_retention_pass_seconds", "Time the retention sweeper spent in its passes",
            registry=self.registry,
        )
        for kind in fields(Swept):  # every kind shows from the start, at 0
            self.retention_removed.labels(kind.name)

    def count_swept(self, swept: Swept, seconds: float) -> None:
        for kind in fields(Swept):
            if removed := getattr(swept, kind.name):
                self.retention_removed.labels(kind.name).inc(removed)
        self.retention_seconds.inc(seconds)

    def watch_queues(self, sessions: sessionmaker[Session], worker_ttl_seconds: float) -> None:
        """Adds the queue's families and the usage ledger's counters, read from the
        database at each scrape."""
        self.registry.register(QueueCollector(sessions, worker_ttl_seconds))
        self.registry.register(UsageCollector(sessions))
