"""The control process's metrics, on VLMQ_METRICS_PORT when it is set: webhook delivery's
(worker/webhooks/metrics.py) and batch work's."""

from __future__ import annotations

from prometheus_client import Counter

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
