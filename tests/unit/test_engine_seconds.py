"""Engine seconds (worker/batcher.py): each engine step's wall time shared equally among
the requests inside it, a request's output carrying the sum of its shares, and the
worker's metric counting exactly what counted requests were given."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from tests.helpers.images import sample_image
from worker.batcher import BatchingEngine
from worker.engines.base import GenerationOutput, GenerationRequest, StepResult
from worker.engines.echo_backend import TimedEchoBackend
from worker.metrics import WorkerMetrics

IMAGE = sample_image(56, 56)
STEP = 0.125  # seconds each fake step takes, on the fake clock (exact in binary)


class SteppedBackend:
    """Every admitted request runs in every step and ends after its max_tokens steps; a
    step takes STEP seconds on `clock`."""

    def __init__(self) -> None:
        self.clock = 0.0
        self._left: dict[str, int] = {}

    def add(self, requests: list[GenerationRequest]) -> list[StepResult]:
        self._left.update({r.request_id: int(r.params["max_tokens"]) for r in requests})
        return []

    def step(self) -> list[StepResult]:
        self.clock += STEP
        for request_id in self._left:
            self._left[request_id] -= 1
        done = [rid for rid, left in self._left.items() if left == 0]
        for rid in done:
            del self._left[rid]
        return [(rid, GenerationOutput("x", [], 1, 1, "length")) for rid in done]

    def abort(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            self._left.pop(rid, None)

    def num_unfinished(self) -> int:
        return len(self._left)

    def shutdown(self) -> None:
        self._left.clear()


def _step_seconds(metrics: WorkerMetrics) -> float:
    return metrics.registry.get_sample_value("vlmq_engine_step_seconds_total") or 0.0


def _run_together(requests: list[GenerationRequest]) -> tuple[list[float], float]:
    """The requests admitted at once; their engine seconds and the metric's total."""
    backend = SteppedBackend()
    metrics = WorkerMetrics("unit")
    engine = BatchingEngine(lambda: backend, max_batch_size=len(requests), max_wait_ms=2000,
                            metrics=metrics, step_clock=lambda: backend.clock)
    try:
        futures: list[Future[GenerationOutput]] = [engine.submit(r) for r in requests]
        shares = [f.result(timeout=5).engine_seconds for f in futures]
    finally:
        engine.shutdown()
    return shares, _step_seconds(metrics)


def _request(request_id: str, steps: int, counted: bool = True) -> GenerationRequest:
    return GenerationRequest(request_id, "describe", IMAGE, {"max_tokens": steps},
                             counted=counted)


def test_a_step_is_shared_among_the_requests_in_it() -> None:
    # Two steps shared by both, two more by the longer one alone.
    shares, metric = _run_together([_request("short", 2), _request("long", 4)])
    assert shares == [2 * STEP / 2, 2 * STEP / 2 + 2 * STEP]
    assert metric == sum(shares) == 4 * STEP


def test_a_warm_up_requests_share_is_not_in_the_metric() -> None:
    shares, metric = _run_together([_request("warm-up", 2, counted=False),
                                    _request("job", 4)])
    assert shares[1] == STEP + 2 * STEP
    assert metric == shares[1]


def test_the_simulated_engine_adds_up_to_its_measured_time() -> None:
    """The simulated GPU engine on the real clock: requests arriving over time, more than
    fit at once (some wait inside the engine, as in vLLM), all adding up to the metric."""
    metrics = WorkerMetrics("unit")
    engine = BatchingEngine(
        lambda: TimedEchoBackend(step_ms=2, max_num_seqs=4), max_batch_size=6,
        max_wait_ms=1, metrics=metrics)
    try:
        futures = [engine.submit(_request(f"r{n}", 1 + n % 5)) for n in range(30)]
        shares = [f.result(timeout=10).engine_seconds for f in futures]
    finally:
        engine.shutdown()
    assert min(shares) > 0
    assert sum(shares) == pytest.approx(_step_seconds(metrics), rel=1e-9)
