"""Dynamic micro-batching in front of a step-driven engine.

Callers `submit()` a request and get a future; no thread waits per job. One loop thread
owns the backend: when idle it gathers requests until `max_batch_size` or `max_wait_ms`,
and while requests are running it admits newcomers before every step, so a job never
waits for a whole batch to finish when there is room (continuous batching).

Failures are contained:
- if the backend fails, the requests inside it fail with EngineError (saying how many
  were inside, so the caller can tell a lone culprit from its batch-mates) and the loop
  loads a fresh backend; requests still waiting are kept for it;
- a `solo` request runs with nothing else in the engine (a suspected poison input);
- a request in the engine longer than `max_job_seconds` is aborted (JobTimedOut).

Engine seconds (the usage ledger's): each step's wall time is shared equally among the
requests inside the engine during it, and a request's output carries the sum of its
shares. A running total of "seconds per request so far" makes that O(1) per step: a
request's share is the total's growth between its admission and its result.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from worker.engines.base import (
    EngineError,
    GenerationOutput,
    GenerationRequest,
    JobTimedOut,
    RequestAborted,
    StepBackend,
    StepResult,
)
from worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

Item = tuple[GenerationRequest, Future[GenerationOutput]]


class BatchingEngine:
    def __init__(
        self,
        backend_factory: Callable[[], StepBackend],
        *,
        max_batch_size: int,
        max_wait_ms: int,
        metrics: WorkerMetrics,
        max_job_seconds: float = 600,
        step_clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.backend_factory = backend_factory
        self.backend = backend_factory()
        self.restarts = 0
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_job_seconds = max_job_seconds
        self.metrics = metrics
        self.step_clock = step_clock
        self._inbox: queue.Queue[Item] = queue.Queue()
        self._futures: dict[str, Future[GenerationOutput]] = {}
        self._admitted_at: dict[str, float] = {}
        self._uncounted: set[str] = set()
        # Seconds of engine step each request inside would have received had it been
        # there from the start; and its value when each request was admitted.
        self._share_total = 0.0
        self._share_at: dict[str, float] = {}
        self._solo_waiting: Item | None = None
        self._solo_running: str | None = None
        self._aborts: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="engine-loop", daemon=True)
        self._thread.start()

    # -- Engine protocol -------------------------------------------------------
    def submit(self, request: GenerationRequest) -> Future[GenerationOutput]:
        future: Future[GenerationOutput] = Future()
        if not self._thread.is_alive():
            future.set_exception(EngineError("engine loop is not running"))
        else:
            self._inbox.put((request, future))
        return future

    def generate(self, request: GenerationRequest) -> GenerationOutput:
        return self.submit(request).result()

    def abort(self, request_id: str) -> None:
        self._aborts.put(request_id)

    def shutdown(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._fail_all(RequestAborted("the worker is shutting down"))
        self.backend.shutdown()

    # -- loop --------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._iterate()
            except Exception as exc:
                log.exception("engine failed; failing its requests and loading it again")
                inside = len(self._futures)
                self._fail_in_flight(EngineError(f"engine failed: {exc}", in_flight=inside))
                self._reload()

    def _iterate(self) -> None:
        self._apply_aborts()
        self._abort_overdue()
        batch = self._gather()
        if batch:
            self._admit(batch)
        if self.backend.num_unfinished():
            self.metrics.batch_size.observe(self.backend.num_unfinished())
            started = self.step_clock()
            finished = self.backend.step()
            self._share_step(self.step_clock() - started)
            self._deliver(finished)
        self.metrics.in_flight.set(self.backend.num_unfinished())

    def _share_step(self, seconds: float) -> None:
        """Shares a step's wall time among the requests inside; the metric counts the part
        of it that fell to counted requests (not warm-up), as the ledger does."""
        inside = len(self._futures)
        if not inside:
            return
        self._share_total += seconds / inside
        counted = inside - len(self._uncounted)
        if counted > 0:
            self.metrics.engine_step_seconds.inc(seconds * counted / inside)

    def _reload(self) -> None:
        try:
            self.backend.shutdown()
        except Exception:
            log.exception("shutting down the failed engine raised; continuing")
        delay = 1.0
        while not self._stop.is_set():
            try:
                self.backend = self.backend_factory()
                self.restarts += 1
                return
            except Exception:
                log.exception("engine reload failed; retrying in %.0fs", delay)
                time.sleep(delay)
                delay = min(delay * 2, 60)

    def _gather(self) -> list[Item]:
        """The next requests to admit: a batch, a lone solo request, or nothing."""
        if self._solo_running is not None:
            return []  # nothing joins a solo request
        idle = self.backend.num_unfinished() == 0
        if self._solo_waiting is not None:
            if not idle:
                return []  # let the engine drain first
            item, self._solo_waiting = self._solo_waiting, None
            self._solo_running = item[0].request_id
            return [item]
        room = self.max_batch_size - self.backend.num_unfinished()
        batch: list[Item] = []
        deadline = time.monotonic() + self.max_wait if idle else 0.0
        wait = 0.2 if idle else 0.0  # idle: block for the first request
        while len(batch) < room:
            try:
                item = self._inbox.get(timeout=wait) if wait > 0 else self._inbox.get_nowait()
            except queue.Empty:
                break
            if item[0].solo:
                self._solo_waiting = item
                break
            batch.append(item)
            wait = deadline - time.monotonic()
        return batch

    def _admit(self, batch: list[Item]) -> None:
        now = time.monotonic()
        for request, future in batch:
            self._futures[request.request_id] = future
            self._admitted_at[request.request_id] = now
            self._share_at[request.request_id] = self._share_total
            if not request.counted:
                self._uncounted.add(request.request_id)
        self.metrics.admitted_together.observe(len(batch))
        try:
            rejected = self.backend.add([request for request, _ in batch])
        except Exception:
            # None of this batch has run: keep it for the engine that replaces this one.
            for request, future in batch:
                self._futures.pop(request.request_id, None)
                self._admitted_at.pop(request.request_id, None)
                self._share_at.pop(request.request_id, None)
                self._inbox.put((request, future))
            if self._solo_running in {request.request_id for request, _ in batch}:
                self._solo_running = None
            raise
        self._deliver(rejected)

    def _deliver(self, results: list[StepResult]) -> None:
        now = time.monotonic()
        for request_id, outcome in results:
            future = self._futures.pop(request_id, None)
            admitted = self._admitted_at.pop(request_id, now)
            share = self._share_total - self._share_at.pop(request_id, self._share_total)
            counted = request_id not in self._uncounted
            self._uncounted.discard(request_id)
            if request_id == self._solo_running:
                self._solo_running = None
            if future is None:
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
                continue
            if not counted:
                future.set_result(outcome)
                continue
            self.metrics.engine_time.observe(now - admitted)
            self.metrics.prompt_tokens.inc(outcome.prompt_tokens)
            self.metrics.completion_tokens.inc(outcome.completion_tokens)
            self.metrics.images.inc()
            future.set_result(dataclasses.replace(outcome, engine_seconds=share))

    def _abort_overdue(self) -> None:
        cutoff = time.monotonic() - self.max_job_seconds
        overdue = [rid for rid, admitted in self._admitted_at.items() if admitted < cutoff]
        if not overdue:
            return
        log.warning("aborting %d requests in the engine longer than %.0fs: %s", len(overdue),
                    self.max_job_seconds, ", ".join(overdue))
        self.backend.abort(overdue)
        self._deliver([
            (rid, JobTimedOut(f"the job spent over {self.max_job_seconds:.0f}s in the engine"))
            for rid in overdue
        ])

    def _apply_aborts(self) -> None:
        ids = []
        while True:
            try:
                ids.append(self._aborts.get_nowait())
            except queue.Empty:
                break
        if not ids:
            return
        inside = [rid for rid in ids if rid in self._futures]
        self.backend.abort(inside)
        self._deliver([(rid, RequestAborted(f"request {rid} aborted")) for rid in inside])
        self._drop_waiting(set(ids))

    def _drop_waiting(self, ids: set[str]) -> None:
        if self._solo_waiting is not None and self._solo_waiting[0].request_id in ids:
            self._solo_waiting[1].set_exception(RequestAborted("request aborted"))
            self._solo_waiting = None
        kept = []
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item[0].request_id in ids:
                item[1].set_exception(RequestAborted(f"request {item[0].request_id} aborted"))
            else:
                kept.append(item)
        for item in kept:
            self._inbox.put(item)

    def _fail_in_flight(self, exc: Exception) -> None:
        for future in self._futures.values():
            if not future.done():
                future.set_exception(exc)
        self._futures.clear()
        self._admitted_at.clear()
        self._share_at.clear()
        self._uncounted.clear()
        self._solo_running = None

    def _fail_all(self, exc: Exception) -> None:
        self._fail_in_flight(exc)
        if self._solo_waiting is not None:
            self._solo_waiting[1].set_exception(exc)
            self._solo_waiting = None
        while True:
            try:
                _, future = self._inbox.get_nowait()
            except queue.Empty:
                break
            future.set_exception(exc)
