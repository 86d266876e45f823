"""API metrics in Prometheus format, served on VLMQ_API_METRICS_PORT at VLMQ_METRICS_HOST (not
the API's port, and loopback by default, so tenant names in labels are not public wherever the
API is)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vlmq_api_requests", "HTTP requests by route template and status",
            ["method", "route", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "vlmq_api_request_seconds", "From request start to the last response byte",
            ["method", "route"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.submissions = Counter(
            "vlmq_api_submissions", "Jobs accepted, by tenant and model",
            ["tenant", "model"], registry=self.registry,
        )
        self.refused = Counter(
            "vlmq_api_rate_limited", "Submissions refused with 429, by tenant and reason",
            ["tenant", "reason"], registry=self.registry,
        )

    def serve(self, port: int, host: str) -> None:
        start_http_server(port, addr=host, registry=self.registry)


class RequestMetrics:
    """ASGI middleware: one count and one latency sample per HTTP request, by route template
    (`/v1/jobs/{job_id}`, not the id), so the label set stays small."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)
