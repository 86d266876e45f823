"""Worker metrics in Prometheus format, served on VLMQ_METRICS_PORT at VLMQ_METRICS_HOST."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class WorkerMetrics:
    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"model": model}
        self.batch_size = Histogram(
            "vlmq_engine_batch_size",
            "Requests advanced together in one engine step",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.admitted_together = Histogram(
            "vlmq_batcher_admitted_batch_size",
            "Requests the micro-batcher handed to the engine at once",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "vlmq_job_queue_wait_seconds",
            "From job creation to the worker starting it",
            buckets=_TIME_BUCKETS,
            registry=self.registry,
        )
        self.engine_time = Histogram(
            "vlmq_job_engine_seconds",
            "From admission into the engine to the finished output",
            buckets=_TIME_BUCKETS,
            registry=self.registry,
        )
        self.engine_step_seconds = Counter(
            "vlmq_engine_step_seconds",
            "Wall time of engine steps, the time the usage ledger shares among the jobs in "
            "each step (warm-up excluded)",
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "vlmq_prompt_tokens", "Prompt tokens processed", registry=self.registry
        )
        self.completion_tokens = Counter(
            "vlmq_completion_tokens", "Tokens generated (rate() gives tokens/s)", registry=self.registry
        )
        self.images = Counter(
            "vlmq_images", "Images finished (rate() gives images/s)", registry=self.registry
        )
        self.jobs = Counter(
            "vlmq_jobs_finished", "Jobs finished by outcome", ["outcome"], registry=self.registry
        )
        self.in_flight = Gauge(
            "vlmq_engine_in_flight", "Requests inside the engine now", registry=self.registry
        )
        self.startup_seconds = Gauge(
            "vlmq_worker_startup_seconds",
            "From the process's start to its first claim: imports, engine load and warm-up "
            "(a cold start, as when scaling from zero)", registry=self.registry,
        )
        self.info = Gauge("vlmq_worker_info", "Worker identity", list(labels), registry=self.registry)
        self.info.labels(**labels).set(1)

    def serve(self, port: int, host: str) -> None:
        start_http_server(port, addr=host, registry=self.registry)
