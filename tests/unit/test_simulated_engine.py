"""The simulated GPU engine (echo with `VLMQ_ECHO_STEP_MS`): its step count and sequence
limit on a fake clock, and the micro-batcher keeping it full on the real one."""

from __future__ import annotations

import math
from concurrent.futures import Future

import pytest

from shared.settings import EngineKind, EngineSettings
from tests.helpers.images import sample_image
from worker.batcher import BatchingEngine
from worker.context import load_backend
from worker.engines.base import GenerationOutput, GenerationRequest, StepResult
from worker.engines.echo_backend import (
    CRASH_MARKER,
    ECHO_TEXT,
    HANG_MARKER,
    EchoBackend,
    TimedEchoBackend,
)
from worker.metrics import WorkerMetrics

IMAGE = sample_image(56, 84)
STEP = 0.015


class FakeClock:
    """Time moves only when the engine sleeps or the test says so."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def engine(clock: FakeClock, max_num_seqs: int, faults: bool = False) -> TimedEchoBackend:
    return TimedEchoBackend(faults, step_ms=1000 * STEP, max_num_seqs=max_num_seqs,
                            clock=clock, sleep=clock.sleep)


def request(request_id: str, max_tokens: int, prompt: str = "describe") -> GenerationRequest:
    return GenerationRequest(request_id, prompt, IMAGE, {"max_tokens": max_tokens})


def outputs(results: list[StepResult]) -> dict[str, GenerationOutput]:
    out = {}
    for request_id, outcome in results:
        assert isinstance(outcome, GenerationOutput), outcome
        out[request_id] = outcome
    return out


@pytest.mark.parametrize(("n", "seqs", "tokens"), [(10, 4, 5), (8, 8, 3), (1, 4, 7), (33, 16, 2)])
def test_n_requests_take_ceil_n_over_seqs_times_tokens_steps(n: int, seqs: int,
                                                              tokens: int) -> None:
    clock = FakeClock()
    backend = engine(clock, seqs)
    backend.add([request(f"r{i}", tokens) for i in range(n)])
    finished_at: dict[str, int] = {}
    calls = 0
    while backend.num_unfinished():
        calls += 1
        for request_id, out in outputs(backend.step()).items():
            finished_at[request_id] = calls
            assert (out.completion_tokens, out.finish_reason) == (tokens, "length")
            assert len(out.text.split()) == tokens == len(out.token_ids)
        assert calls <= 1000
    waves = math.ceil(n / seqs)
    assert calls == backend.steps == waves * tokens
    assert backend.peak_running == min(n, seqs)  # never more than the limit in flight
    assert backend.sequence_steps == n * tokens
    # First come, first served: request i runs in wave i // seqs.
    assert finished_at == {f"r{i}": (i // seqs + 1) * tokens for i in range(n)}
    # Nothing else took time, so every step slept its whole period.
    assert clock.slept == pytest.approx([STEP] * calls)
    assert backend.max_images_per_s(64) == pytest.approx(seqs / (64 * STEP))


def test_the_period_holds_whatever_the_caller_does_between_steps() -> None:
    clock = FakeClock()
    backend = engine(clock, 4)
    backend.add([request("r", 10)])
    backend.step()
    clock.now += 0.4 * STEP  # the worker's own work between steps
    backend.step()
    assert clock.slept == pytest.approx([STEP, 0.6 * STEP])  # only the remainder
    assert clock.now == pytest.approx(2 * STEP)
    # Back 2.5 steps late: the engine ran on meanwhile, as vLLM's engine core does, and
    # the call returns the steps that ended without sleeping.
    clock.now += 2.5 * STEP
    backend.step()
    assert backend.steps == 4 and len(clock.slept) == 2


def test_a_request_added_while_a_step_runs_joins_the_next() -> None:
    clock = FakeClock()
    backend = engine(clock, 4)
    backend.add([request("a", 3)])
    assert backend.step() == []  # step 1 over [0, 1)
    clock.now += 0.3 * STEP  # step 2 began at 1 step
    backend.add([request("b", 3)])
    backend.step()
    assert backend.sequence_steps == 1 + 1  # step 2 ran "a" alone
    assert list(outputs(backend.step())) == ["a"]  # step 3
    assert backend.step() == []
    assert list(outputs(backend.step())) == ["b"]  # step 5: joined at 3
    assert backend.num_unfinished() == 0


def test_an_idle_engine_starts_a_step_when_a_request_arrives() -> None:
    clock = FakeClock()
    backend = engine(clock, 4)
    backend.add([request("a", 1)])
    backend.step()
    clock.now = 10.0
    backend.add([request("b", 1)])
    clock.now += 0.25 * STEP
    assert list(outputs(backend.step())) == ["b"]
    assert clock.slept[-1] == pytest.approx(0.75 * STEP)


def test_a_hung_request_holds_its_slot_and_abort_frees_it() -> None:
    clock = FakeClock()
    backend = engine(clock, 2, faults=True)
    backend.add([request("hung", 2, f"x {HANG_MARKER}"), request("r1", 2), request("r2", 2)])
    finished = {}
    for call in range(1, 9):
        finished.update({rid: call for rid in outputs(backend.step())})
    assert finished == {"r1": 2, "r2": 4}  # r2 waited for r1's slot, not the hung one's
    assert backend.num_unfinished() == 1 and backend.peak_running == 2
    backend.abort(["hung"])
    assert backend.num_unfinished() == 0


def test_abort_in_the_engine_and_waiting() -> None:
    clock = FakeClock()
    backend = engine(clock, 1)
    backend.add([request("a", 3), request("b", 3)])
    backend.step()  # a runs, due to finish at step 3; b waits
    backend.abort(["a", "b"])
    assert backend.num_unfinished() == 0
    backend.add([request("a", 4)])  # the same id again, as a retried job's
    finished = {}
    for call in range(2, 8):
        finished.update({rid: (call, out) for rid, out in outputs(backend.step()).items()})
    # Its own four steps (2 to 5), not the aborted run's step 3.
    assert list(finished) == ["a"] and finished["a"][0] == 5
    assert finished["a"][1].completion_tokens == 4


def test_a_crash_marked_request_fails_the_step_it_joins() -> None:
    clock = FakeClock()
    backend = engine(clock, 4, faults=True)
    backend.add([request("ok", 2), request("bad", 2, CRASH_MARKER)])
    with pytest.raises(RuntimeError, match="crashed"):
        backend.step()


def test_the_settings_choose_the_engine() -> None:
    plain = load_backend(EngineSettings(engine=EngineKind.echo))
    assert type(plain) is EchoBackend  # 0 ms: every request at the next step, as before
    timed = load_backend(EngineSettings(engine=EngineKind.echo, echo_step_ms=2.5,
                                        max_num_seqs=7, echo_faults=True))
    assert isinstance(timed, TimedEchoBackend)
    assert (timed.step_seconds, timed.max_num_seqs, timed.faults) == (0.0025, 7, True)


def test_the_batcher_keeps_the_simulated_engine_full() -> None:
    """Real clock, short steps: the batcher holds twice the engine's sequences, so each
    slot a finished sequence frees is taken at the next step, and the whole run takes the
    steps a never-idle engine needs. Counted in steps, so a slow machine does not fail it
    unless the batcher falls a whole sequence's lifetime behind."""
    seqs, tokens, n = 16, 8, 128
    backend = TimedEchoBackend(step_ms=10, max_num_seqs=seqs)
    batcher = BatchingEngine(lambda: backend, max_batch_size=2 * seqs, max_wait_ms=50,
                             metrics=WorkerMetrics("unit"))
    try:
        futures: list[Future[GenerationOutput]] = [
            batcher.submit(request(f"r{i}", tokens)) for i in range(n)]
        outs = [f.result(timeout=30) for f in futures]
    finally:
        batcher.shutdown()
    assert all(o.completion_tokens == tokens and o.finish_reason == "length" for o in outs)
    assert outs[0].text == " ".join(ECHO_TEXT.split()[:tokens])
    ideal = math.ceil(n / seqs) * tokens
    assert backend.peak_running == seqs
    assert backend.sequence_steps == n * tokens
    occupancy = backend.sequence_steps / (backend.steps * seqs)
    assert backend.steps <= ideal * 1.1, f"{backend.steps} steps for {ideal} ideal"
    assert occupancy >= 0.9
