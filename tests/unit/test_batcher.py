"""The micro-batcher (worker/batcher.py) in front of the echo engine, in-process: the real
loop thread, the real backend; requests go in as futures and come out as outputs or errors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import pytest

from shared.settings import EngineSettings
from tests.helpers.images import sample_image
from worker.batcher import BatchingEngine
from worker.engines.base import (
    EngineError,
    GenerationOutput,
    GenerationRequest,
    JobTimedOut,
    RequestAborted,
)
from worker.engines.echo_backend import CRASH_MARKER, ECHO_TEXT, HANG_MARKER, EchoBackend
from worker.metrics import WorkerMetrics
from worker.warmup import warm_up

IMAGE = sample_image(56, 84)  # 2 x 3 patches of 28 pixels
RESULT_TIMEOUT = 5.0


class Batcher:
    """A BatchingEngine on echo backends, with the numbers the tests read."""

    def __init__(self, *, faults: bool = False, **options: float) -> None:
        self.backends: list[EchoBackend] = []
        self.metrics = WorkerMetrics("unit")
        options = {"max_batch_size": 8, "max_wait_ms": 50, **options}
        self.engine = BatchingEngine(lambda: self._new_backend(faults), metrics=self.metrics,
                                     **options)  # type: ignore[arg-type]

    def _new_backend(self, faults: bool) -> EchoBackend:
        self.backends.append(EchoBackend(faults=faults))
        return self.backends[-1]

    def submit(self, request_id: str, prompt: str = "describe", *, max_tokens: int = 4,
               solo: bool = False) -> Future[GenerationOutput]:
        return self.engine.submit(GenerationRequest(request_id, prompt, IMAGE,
                                                    {"max_tokens": max_tokens}, solo=solo))

    def admitted_batches(self) -> tuple[float, float]:
        """(how many admissions, how many requests admitted in all)."""
        sample = self.metrics.registry.get_sample_value
        return (sample("vlmq_batcher_admitted_batch_size_count") or 0.0,
                sample("vlmq_batcher_admitted_batch_size_sum") or 0.0)

    def largest_step(self) -> float:
        """The upper bound of the smallest bucket holding every engine step's batch size."""
        sample = self.metrics.registry.get_sample_value
        total = sample("vlmq_engine_batch_size_count") or 0.0
        for bound in (1, 2, 4, 8, 16, 32, 64, 128, 256):
            if sample("vlmq_engine_batch_size_bucket", {"le": f"{float(bound)}"}) == total:
                return float(bound)
        return float("inf")

    def wait_in_engine(self, count: int) -> None:
        deadline = time.monotonic() + RESULT_TIMEOUT
        while self.engine.backend.num_unfinished() != count:
            assert time.monotonic() < deadline, "the engine never held the requests"
            time.sleep(0.002)


@pytest.fixture()
def make_batcher() -> Iterator[Callable[..., Batcher]]:
    made: list[Batcher] = []

    def make(**options: float) -> Batcher:
        made.append(Batcher(**options))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for batcher in made:
        batcher.engine.shutdown()


def outcome(future: Future[GenerationOutput]) -> GenerationOutput | BaseException:
    try:
        return future.result(timeout=RESULT_TIMEOUT)
    except Exception as exc:
        return exc


def test_a_request_gets_the_echo_answer(make_batcher: Callable[..., Batcher]) -> None:
    batcher = make_batcher()
    out = batcher.submit("r1", "x" * 40, max_tokens=3).result(timeout=RESULT_TIMEOUT)
    assert out.text == " ".join(ECHO_TEXT.split()[:3])
    assert (out.completion_tokens, out.finish_reason) == (3, "length")
    assert out.prompt_tokens == 40 // 4 + 2 * 3 + 8  # text + image patches + template
    long = batcher.submit("r2", max_tokens=500).result(timeout=RESULT_TIMEOUT)
    assert (long.text, long.finish_reason) == (ECHO_TEXT, "stop")


def test_requests_that_arrive_together_are_admitted_together(
    make_batcher: Callable[..., Batcher],
) -> None:
    # The batch is full at 6, so the wait (a bound for a slow machine) ends there.
    batcher = make_batcher(max_batch_size=6, max_wait_ms=1000)
    futures = [batcher.submit(f"r{i}") for i in range(6)]
    assert all(isinstance(outcome(f), GenerationOutput) for f in futures)
    assert batcher.admitted_batches() == (1.0, 6.0)
    assert batcher.metrics.registry.get_sample_value("vlmq_images_total") == 6.0


def test_batches_never_exceed_max_batch_size(make_batcher: Callable[..., Batcher]) -> None:
    batcher = make_batcher(max_batch_size=4, max_wait_ms=100)
    futures = [batcher.submit(f"r{i}") for i in range(10)]
    assert all(isinstance(outcome(f), GenerationOutput) for f in futures)
    count, total = batcher.admitted_batches()
    assert total == 10.0 and count >= 3.0
    assert batcher.largest_step() <= 4.0


def test_newcomers_join_a_running_batch(make_batcher: Callable[..., Batcher]) -> None:
    """Continuous batching: a request that arrives while others run is admitted before the
    next step, without waiting for them to finish."""
    batcher = make_batcher(faults=True)
    hung = batcher.submit("hung", f"stay {HANG_MARKER}")
    batcher.wait_in_engine(1)
    assert isinstance(outcome(batcher.submit("late")), GenerationOutput)
    assert not hung.done()
    batcher.engine.abort("hung")
    assert isinstance(outcome(hung), RequestAborted)


def test_abort_of_a_request_in_the_engine(make_batcher: Callable[..., Batcher]) -> None:
    batcher = make_batcher(faults=True)
    futures = {rid: batcher.submit(rid, f"{rid} {HANG_MARKER}") for rid in ("a", "b")}
    batcher.wait_in_engine(2)
    batcher.engine.abort("a")
    assert isinstance(outcome(futures["a"]), RequestAborted)
    batcher.wait_in_engine(1)  # b stays
    assert not futures["b"].done()
    batcher.engine.abort("unknown")  # an id the engine never saw changes nothing
    batcher.engine.abort("b")
    assert isinstance(outcome(futures["b"]), RequestAborted)
    batcher.wait_in_engine(0)


def test_a_solo_request_waits_for_the_engine_to_drain(
    make_batcher: Callable[..., Batcher],
) -> None:
    batcher = make_batcher(faults=True)
    hung = batcher.submit("hung", HANG_MARKER)
    batcher.wait_in_engine(1)
    solo = batcher.submit("solo", solo=True)
    time.sleep(0.1)
    assert not solo.done()  # not admitted beside the hung request
    batcher.engine.abort("hung")
    assert isinstance(outcome(solo), GenerationOutput)
    assert isinstance(outcome(hung), RequestAborted)


def test_nothing_joins_a_solo_request(make_batcher: Callable[..., Batcher]) -> None:
    batcher = make_batcher(faults=True)
    solo = batcher.submit("solo", HANG_MARKER, solo=True)
    batcher.wait_in_engine(1)
    others = [batcher.submit(f"r{i}") for i in range(3)]
    time.sleep(0.1)
    assert not any(f.done() for f in others)
    assert batcher.engine.backend.num_unfinished() == 1
    batcher.engine.abort("solo")
    assert isinstance(outcome(solo), RequestAborted)
    assert all(isinstance(outcome(f), GenerationOutput) for f in others)


def test_abort_of_a_waiting_solo_request(make_batcher: Callable[..., Batcher]) -> None:
    batcher = make_batcher(faults=True)
    hung = batcher.submit("hung", HANG_MARKER)
    batcher.wait_in_engine(1)
    solo = batcher.submit("solo", solo=True)
    time.sleep(0.05)
    batcher.engine.abort("solo")
    assert isinstance(outcome(solo), RequestAborted)
    assert not hung.done()
    batcher.engine.abort("hung")
    assert isinstance(outcome(hung), RequestAborted)


def test_engine_failure_fails_its_batch_and_a_fresh_engine_takes_over(
    make_batcher: Callable[..., Batcher],
) -> None:
    batcher = make_batcher(faults=True, max_batch_size=3, max_wait_ms=1000)
    batch = [batcher.submit("r0"), batcher.submit("bad", CRASH_MARKER), batcher.submit("r2")]
    errors = [outcome(f) for f in batch]
    assert all(isinstance(e, EngineError) for e in errors)
    # Three were inside: the caller cannot tell the culprit from its batch-mates.
    assert {e.in_flight for e in errors} == {3}  # type: ignore[union-attr]
    assert "engine failed" in str(errors[0])
    after = [batcher.submit(f"after{i}") for i in range(3)]  # a full batch: no wait
    assert all(isinstance(outcome(f), GenerationOutput) for f in after)
    assert batcher.engine.restarts == 1 and len(batcher.backends) == 2
    assert batcher.backends[0].num_unfinished() == 0  # the failed one was shut down


def test_requests_waiting_at_a_failure_are_kept_for_the_next_engine(
    make_batcher: Callable[..., Batcher],
) -> None:
    batcher = make_batcher(faults=True, max_batch_size=1)
    crash = batcher.submit("bad", CRASH_MARKER)
    waiting = [batcher.submit(f"r{i}") for i in range(3)]
    error = outcome(crash)
    assert isinstance(error, EngineError) and error.in_flight == 1  # alone: the culprit
    assert all(isinstance(outcome(f), GenerationOutput) for f in waiting)
    assert batcher.engine.restarts == 1


def test_a_request_over_the_time_limit_is_aborted(make_batcher: Callable[..., Batcher]) -> None:
    batcher = make_batcher(faults=True, max_job_seconds=0.1)
    error = outcome(batcher.submit("slow", HANG_MARKER))
    assert isinstance(error, JobTimedOut) and "in the engine" in str(error)
    batcher.wait_in_engine(0)
    assert isinstance(outcome(batcher.submit("next")), GenerationOutput)


def test_shutdown_fails_what_is_left_and_refuses_new_requests() -> None:
    batcher = Batcher(faults=True)
    hung = batcher.submit("hung", HANG_MARKER)
    batcher.wait_in_engine(1)
    batcher.engine.shutdown()
    assert isinstance(outcome(hung), RequestAborted)
    late = outcome(batcher.submit("late"))
    assert isinstance(late, EngineError) and "not running" in str(late)


def test_a_warm_up_runs_through_the_engine_and_counts_in_no_metric(
        make_batcher: Callable[..., Batcher]) -> None:
    batcher = make_batcher()
    # The echo engine has nothing to warm, so warm up as a vLLM worker would.
    warm_up(batcher.engine, EngineSettings(engine="vllm"))
    assert len(batcher.backends) == 1 and batcher.backends[0].num_unfinished() == 0
    sample = batcher.metrics.registry.get_sample_value
    assert (sample("vlmq_images_total") or 0.0) == 0.0
    assert (sample("vlmq_job_engine_seconds_count") or 0.0) == 0.0
    batcher.submit("job").result(RESULT_TIMEOUT)
    assert sample("vlmq_images_total") == 1.0
    assert sample("vlmq_job_engine_seconds_count") == 1.0


def test_an_echo_worker_skips_the_warm_up(make_batcher: Callable[..., Batcher]) -> None:
    batcher = make_batcher()
    warm_up(batcher.engine, EngineSettings(engine="echo"))
    assert batcher.admitted_batches() == (0.0, 0.0)
