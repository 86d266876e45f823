"""Webhook worker metrics in Prometheus format, on VLMQ_METRICS_PORT when it is set."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

_TIME_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class WebhookMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.attempts = Counter(
            "vlmq_webhook_attempts",
            "Delivery attempts by the delivery's state afterwards "
            "(succeeded, pending = will retry, disabled, dead_lettered)",
            ["outcome"],
            registry=self.registry,
        )
        self.attempt_time = Histogram(
            "vlmq_webhook_attempt_seconds",
            "One attempt, from connecting to the end of the response",
            buckets=_TIME_BUCKETS,
            registry=self.registry,
        )
        self.dispatched = Counter(
            "vlmq_webhook_dispatched",
            "Due deliveries sent to the webhook queue",
            registry=self.registry,
        )

    def serve(self, port: int, host: str) -> None:
        start_http_server(port, addr=host, registry=self.registry)
