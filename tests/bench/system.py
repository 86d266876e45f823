"""The full system under load: HTTP upload -> S3 -> Celery/Redis -> vLLM worker -> Postgres.

Clients run closed loops (submit, wait for the result, submit the next) at several
concurrencies, then a burst submits every job at once. Times come from the client's
clock (submit) and the job rows (created, started, finished), on one machine.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import select

from shared.db import make_engine, make_session_factory
from shared.jobs.status import TERMINAL
from shared.models import Job
from shared.settings import Settings
from tests.bench import cpu_profile
from tests.bench.stack import stack
from tests.bench.workload import Workload


@dataclass
class Level:
    concurrency: int
    jobs: int
    seconds: float
    images_per_s: float
    latency_p50_s: float
    latency_p95_s: float
    submit_p50_s: float
    queued_p50_s: float
    running_p50_s: float


class Watcher:
    """One thread polls Postgres for finished jobs and wakes the clients waiting on them."""

    def __init__(self, settings: Settings) -> None:
        self.sessions = make_session_factory(make_engine(settings))
        self._waiting: dict[uuid.UUID, threading.Event] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def wait(self, job_id: uuid.UUID) -> None:
        event = threading.Event()
        with self._lock:
            self._waiting[job_id] = event
        event.wait()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            with self._lock:
                ids = list(self._waiting)
            if not ids:
                continue
            with self.sessions() as session:
                done = session.scalars(
                    select(Job.id).where(Job.id.in_(ids), Job.status.in_(list(TERMINAL)))
                ).all()
            with self._lock:
                for job_id in done:
                    self._waiting.pop(job_id).set()

    def close(self) -> None:
        self._stop.set()


@contextmanager
def running_system(w: Workload,
                   log_dir: Path) -> Iterator[tuple[str, dict[str, str], Settings]]:
    with stack(w, log_dir, store="s3") as st:
        print("bench: starting api and vLLM worker", file=sys.stderr, flush=True)
        _, base = st.start_api()
        st.start_worker("vllm")
        yield base, st.headers, st.settings


def submit(client: httpx.Client, w: Workload, i: int) -> tuple[uuid.UUID, float, float]:
    start = time.time()
    resp = client.post(
        "/v1/jobs",
        files={"image": (f"{i}.png", w.png(i), "image/png")},
        data={"prompt": w.prompt(i), "max_tokens": str(w.max_tokens), "temperature": "0"},
    )
    resp.raise_for_status()
    return uuid.UUID(resp.json()["id"]), start, time.time() - start


def run_level(base: str, headers: dict[str, str], settings: Settings, watcher: Watcher,
              w: Workload, concurrency: int, jobs: int, first: int,
              burst: bool = False) -> Level:
    indices = iter(range(first, first + jobs))
    lock = threading.Lock()
    submitted: list[tuple[uuid.UUID, float, float]] = []

    def client_loop() -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            while True:
                with lock:
                    i = next(indices, None)
                if i is None:
                    return
                job_id, start, rtt = submit(client, w, i)
                with lock:
                    submitted.append((job_id, start, rtt))
                if not burst:
                    watcher.wait(job_id)

    t0 = time.time()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(client_loop) for _ in range(concurrency)]:
            f.result()
    if burst:
        for job_id, _, _ in submitted:
            watcher.wait(job_id)
    return summarize(settings, concurrency, t0, submitted)


def summarize(settings: Settings, concurrency: int, t0: float,
              submitted: list[tuple[uuid.UUID, float, float]]) -> Level:
    with make_session_factory(make_engine(settings))() as session:
        rows = {j.id: j for j in session.scalars(select(Job).where(
            Job.id.in_([s[0] for s in submitted])))}
    failed = [r for r in rows.values() if r.status != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} jobs did not succeed, e.g. {failed[0].error_message}")
    finished = {i: rows[i].finished_at.timestamp() for i, _, _ in submitted}
    latency = sorted(finished[i] - start for i, start, _ in submitted)
    seconds = max(finished.values()) - t0
    return Level(
        concurrency=concurrency,
        jobs=len(submitted),
        seconds=seconds,
        images_per_s=len(submitted) / seconds,
        latency_p50_s=statistics.median(latency),
        latency_p95_s=latency[int(0.95 * (len(latency) - 1))],
        submit_p50_s=statistics.median(rtt for _, _, rtt in submitted),
        queued_p50_s=statistics.median(
            (r.started_at - r.created_at).total_seconds() for r in rows.values()),
        running_p50_s=statistics.median(
            (r.finished_at - r.started_at).total_seconds() for r in rows.values()),
    )


def measure(w: Workload, log_dir: Path) -> tuple[list[Level], Level, dict[str, float]]:
    """Closed-loop levels, then the burst of every job at once (the headline figure)."""
    with running_system(w, log_dir) as (base, headers, settings):
        watcher = Watcher(settings)
        try:
            run_level(base, headers, settings, watcher, w, 4, 16, first=90_000)  # warm-up
            plan = [(1, w.light_jobs), (4, 32), (16, 64), (w.max_batch_size, 2 * w.max_batch_size)]
            # BENCH_JOBS below the default shrinks every level too, for quick trial runs.
            plan = [(min(c, n, w.jobs), min(n, w.jobs)) for c, n in plan]
            levels, first = [], 0
            for concurrency, jobs in plan:
                print(f"bench: system, {concurrency} concurrent clients, {jobs} jobs",
                      file=sys.stderr, flush=True)
                levels.append(run_level(base, headers, settings, watcher, w, concurrency, jobs,
                                        first))
                print(f"bench:   {levels[-1].images_per_s:.1f} images/s, p50 "
                      f"{levels[-1].latency_p50_s:.3f} s", file=sys.stderr, flush=True)
                first += jobs
            print(f"bench: system, burst of {w.jobs} jobs", file=sys.stderr, flush=True)
            cpu_before = cpu_profile.snapshot()
            burst = run_level(base, headers, settings, watcher, w, 16, w.jobs, first,
                              burst=True)
            cpu = cpu_profile.delta(cpu_before, cpu_profile.snapshot())
            burst.concurrency = w.jobs  # every job outstanding at once
            return levels, burst, cpu
        finally:
            watcher.close()
