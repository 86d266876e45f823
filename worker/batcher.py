"""Dynamic micro-batching in front of a step-driven engine.

Task threads call `generate()` and block on a future. One loop thread owns the
backend: when idle it gathers requests until `max_batch_size` or `max_wait_ms`,
and while requests are running it admits newcomers before every step, so a job
never waits for a whole batch to finish when there is room (continuous batching).
If the backend fails, the requests inside it fail with EngineError and the loop
loads a fresh backend; requests still waiting are kept for it.
"""

from __future__ import annotations

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
    RequestAborted,
    StepBackend,
    StepResult,
)
from worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)


class BatchingEngine:
    def __init__(
        self,
        backend_factory: Callable[[], StepBackend],
        *,
        max_batch_size: int,
        max_wait_ms: int,
        metrics: WorkerMetrics,
    ) -> None:
        self.backend_factory = backend_factory
        self.backend = backend_factory()
        self.restarts = 0
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.metrics = metrics
        self._inbox: queue.Queue[tuple[GenerationRequest, Future[GenerationOutput]]] = queue.Queue()
        self._futures: dict[str, Future[GenerationOutput]] = {}
        self._admitted_at: dict[str, float] = {}
        self._aborts: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._restarting = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="engine-loop", daemon=True)
        self._thread.start()

    # -- Engine protocol -------------------------------------------------------
    def generate(self, request: GenerationRequest) -> GenerationOutput:
        if not self._thread.is_alive():
            raise EngineError("engine loop is not running")
        future: Future[GenerationOutput] = Future()
        self._inbox.put((request, future))
        return future.result()

    def abort(self, request_id: str) -> None:
        self._aborts.put(request_id)

    def check_health(self) -> None:
        if self._restarting.is_set():
            raise EngineError("engine is restarting after a failure")
        if not self._thread.is_alive():
            raise EngineError("engine loop is not running")

    def shutdown(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._fail_all(EngineError("worker is shutting down"))
        self.backend.shutdown()

    # -- loop --------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._iterate()
            except Exception as exc:
                log.exception("engine failed; failing its requests and loading it again")
                self._fail_in_flight(EngineError(f"engine failed: {exc}"))
                self._reload()

    def _iterate(self) -> None:
        self._apply_aborts()
        batch = self._gather()
        if batch:
            self._admit(batch)
        if self.backend.num_unfinished():
            self.metrics.batch_size.observe(self.backend.num_unfinished())
            self._deliver(self.backend.step())
        self.metrics.in_flight.set(self.backend.num_unfinished())

    def _reload(self) -> None:
        self._restarting.set()
        try:
            self.backend.shutdown()
        except Exception:
            log.exception("shutting down the failed engine raised; continuing")
        delay = 1.0
        while not self._stop.is_set():
            try:
                self.backend = self.backend_factory()
                self.restarts += 1
                self._restarting.clear()
                return
            except Exception:
                log.exception("engine reload failed; retrying in %.0fs", delay)
                time.sleep(delay)
                delay = min(delay * 2, 60)

    def _gather(self) -> list[tuple[GenerationRequest, Future[GenerationOutput]]]:
        room = self.max_batch_size - self.backend.num_unfinished()
        if room <= 0:
            return []
        batch = []
        if self.backend.num_unfinished() == 0:
            try:
                batch.append(self._inbox.get(timeout=0.2))
            except queue.Empty:
                return []
            deadline = time.monotonic() + self.max_wait
            while len(batch) < room and (left := deadline - time.monotonic()) > 0:
                try:
                    batch.append(self._inbox.get(timeout=left))
                except queue.Empty:
                    break
        while len(batch) < room:
            try:
                batch.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _admit(self, batch: list[tuple[GenerationRequest, Future[GenerationOutput]]]) -> None:
        now = time.monotonic()
        for request, future in batch:
            self._futures[request.request_id] = future
            self._admitted_at[request.request_id] = now
        self.metrics.admitted_together.observe(len(batch))
        try:
            rejected = self.backend.add([request for request, _ in batch])
        except Exception:
            # None of this batch has run: keep it for the engine that replaces this one.
            for request, future in batch:
                self._futures.pop(request.request_id, None)
                self._admitted_at.pop(request.request_id, None)
                self._inbox.put((request, future))
            raise
        self._deliver(rejected)

    def _deliver(self, results: list[StepResult]) -> None:
        now = time.monotonic()
        for request_id, outcome in results:
            future = self._futures.pop(request_id, None)
            admitted = self._admitted_at.pop(request_id, now)
            if future is None:
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
                continue
            self.metrics.engine_time.observe(now - admitted)
            self.metrics.prompt_tokens.inc(outcome.prompt_tokens)
            self.metrics.completion_tokens.inc(outcome.completion_tokens)
            self.metrics.images.inc()
            future.set_result(outcome)

    def _apply_aborts(self) -> None:
        ids = []
        while True:
            try:
                ids.append(self._aborts.get_nowait())
            except queue.Empty:
                break
        if not ids:
            return
        waiting = [rid for rid in ids if rid in self._futures]
        self.backend.abort(waiting)
        self._deliver([(rid, RequestAborted(f"request {rid} aborted")) for rid in waiting])
        self._drop_from_inbox(set(ids))

    def _drop_from_inbox(self, ids: set[str]) -> None:
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

    def _fail_all(self, exc: Exception) -> None:
        self._fail_in_flight(exc)
        while True:
            try:
                _, future = self._inbox.get_nowait()
            except queue.Empty:
                break
            future.set_exception(exc)
