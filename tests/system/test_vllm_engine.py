"""The vLLM engine on the real worker path: routing by model, parity with transformers,
micro-batching under concurrent load, and recovery when the engine process dies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from tests.helpers.images import png_bytes
from tests.helpers.services import Service, free_port, start_worker, wait_terminal
from tests.helpers.stack import Stack

VLLM_MODEL = "tiny-qwen2-vl-vllm"


@pytest.fixture(scope="module")
def vllm_stack(stack: Stack) -> Stack:
    return stack.with_env(
        model=VLLM_MODEL,
        engine="vllm",
        enforce_eager="true",
        max_batch_size="32",
        max_num_seqs="32",
        # Jobs claimed together are admitted together even on a loaded machine, before a
        # paused engine core (the cancel and engine-death tests) holds the batcher in a step.
        max_wait_ms="1000",
        metrics_port=str(free_port()),
        heartbeat_seconds="1",
        # One attempt, so an engine failure shows as the job's final state.
        max_attempts="1",
    )


@pytest.fixture(scope="module")
def vllm_worker(vllm_stack: Stack) -> Iterator[Service]:
    svc = start_worker(vllm_stack.env, vllm_stack.log_dir, name="worker-vllm")
    yield svc
    svc.stop()


def metrics(stack: Stack) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = httpx.get(f"http://127.0.0.1:{stack.settings.metrics_port}/metrics").text
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def sample(m: dict, name: str, **labels: str) -> float:
    """A sample's value; 0 when the series has no samples yet (a labelled counter unused)."""
    return m.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def submit(client: httpx.Client, model: str, seed: int, max_tokens: int, **extra: str) -> str:
    resp = client.post(
        "/v1/jobs",
        files={"image": (f"img{seed}.png", png_bytes(224 + 28 * (seed % 4), 168, seed=seed), "image/png")},
        data={"prompt": f"What is in picture {seed}?", "model": model,
              "max_tokens": str(max_tokens), **extra},
    )
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


@contextmanager
def paused(*processes: psutil.Process) -> Iterator[None]:
    """The processes stopped (SIGSTOP) until the block ends.

    A paused worker claims nothing, so jobs submitted meanwhile wait in the queue and its
    next claim takes them all at once. A paused engine core makes no progress, so a job
    that enters it stays inside however fast the engine is: on a fast CPU the tiny model
    finishes thousands of tokens in a second or two, too quickly to race against.
    """
    for process in processes:
        process.suspend()
    try:
        yield
    finally:
        for process in processes:
            with suppress(psutil.NoSuchProcess):  # killed inside the block
                process.resume()


def admitted(stack: Stack) -> float:
    """Requests the worker's batcher has handed to the engine so far."""
    return sample(metrics(stack), "vlmq_batcher_admitted_batch_size_sum")


def wait_admitted(stack: Stack, count: float, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while admitted(stack) < count:
        assert time.monotonic() < deadline, f"fewer than {count:.0f} requests reached the engine"
        time.sleep(0.05)


def wait_all(client: httpx.Client, ids: list[str], timeout: float = 180) -> list[dict]:
    return [wait_terminal(client, job_id, timeout=timeout) for job_id in ids]


def test_models_lists_each_live_worker(client: httpx.Client, worker: Service, vllm_worker: Service) -> None:
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models[VLLM_MODEL]["engines"] == ["vllm"]
    assert models[VLLM_MODEL]["workers"] == 1
    assert models[VLLM_MODEL]["capacity"] == 32
    assert models["tiny-qwen2-vl"]["engines"] == ["transformers"]


def test_unknown_model_is_rejected(client: httpx.Client) -> None:
    resp = client.post(
        "/v1/jobs",
        files={"image": ("a.png", png_bytes(), "image/png")},
        data={"prompt": "hi", "model": "no-such-model"},
    )
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == "unknown_model"
    assert VLLM_MODEL in error["message"]


def test_vllm_job_runs_end_to_end_and_matches_transformers(
    client: httpx.Client, worker: Service, vllm_stack: Stack, vllm_worker: Service,
    db_engine: Engine,
) -> None:
    before = sample(metrics(vllm_stack), "vlmq_jobs_finished_total", outcome="succeeded")
    # Same image, prompt and greedy decoding, routed by model to each worker.
    by_engine = {
        model: wait_terminal(client, submit(client, model, seed=3, max_tokens=12))
        for model in (VLLM_MODEL, "tiny-qwen2-vl")
    }
    for job in by_engine.values():
        assert job["status"] == "succeeded", job
        assert job["result"]["completion_tokens"] == 12
        assert job["result"]["prompt_tokens"] > 20
    vllm_job, hf_job = by_engine[VLLM_MODEL], by_engine["tiny-qwen2-vl"]
    assert vllm_job["model"] == VLLM_MODEL
    assert vllm_job["result"]["text"] == hf_job["result"]["text"]
    assert vllm_job["result"]["prompt_tokens"] == hf_job["result"]["prompt_tokens"]
    after = sample(metrics(vllm_stack), "vlmq_jobs_finished_total", outcome="succeeded")
    assert after == before + 1, "the vLLM worker did not run the job routed to its model"
    # The usage ledger's image tokens: the prompt's image placeholders, counted alike.
    with db_engine.connect() as conn:
        usage = {model: conn.execute(
            text("SELECT image_tokens, engine_seconds FROM jobs WHERE id = :id"),
            {"id": job["id"]}).one() for model, job in by_engine.items()}
    assert usage[VLLM_MODEL].image_tokens == usage["tiny-qwen2-vl"].image_tokens > 0
    assert min(u.engine_seconds for u in usage.values()) > 0


def test_greedy_token_ids_match_transformers(tiny_model: Path) -> None:
    """The engines are compared the way vLLM's own tests compare against HF: same inputs,
    greedy decoding, identical token ids."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.helpers.parity_probe", str(tiny_model), "24"],
        capture_output=True, text=True, timeout=400,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("PARITY "))
    result = json.loads(line.removeprefix("PARITY "))
    assert result["vllm"] == result["transformers"]
    assert all(len(ids) == 24 for ids in result["vllm"].values())


def test_concurrent_jobs_share_engine_steps(
    client: httpx.Client, vllm_stack: Stack, vllm_worker: Service
) -> None:
    before = metrics(vllm_stack)
    n = 24
    # Queued together, as under load: submitted to a running worker, each job's 24 tokens
    # can be done before a CPU-starved API accepts the next one.
    with paused(psutil.Process(vllm_worker.proc.pid)), ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: submit(client, VLLM_MODEL, seed=i, max_tokens=24), range(n)))
    jobs = wait_all(client, ids)
    assert [j["status"] for j in jobs] == ["succeeded"] * n

    after = metrics(vllm_stack)
    def multi(m: dict, name: str) -> float:
        """Observations above 1 in a batch-size histogram: count minus the le=1 bucket."""
        return sample(m, f"{name}_count") - sample(m, f"{name}_bucket", le="1.0")
    steps_shared = multi(after, "vlmq_engine_batch_size") - multi(before, "vlmq_engine_batch_size")
    steps = sample(after, "vlmq_engine_batch_size_count") - sample(before, "vlmq_engine_batch_size_count")
    print(f"{steps_shared:.0f} of {steps:.0f} engine steps advanced more than one job")
    assert steps_shared > steps / 2
    handed_over = sample(after, "vlmq_batcher_admitted_batch_size_sum") - sample(
        before, "vlmq_batcher_admitted_batch_size_sum")
    assert handed_over == n
    images = sample(after, "vlmq_images_total") - sample(before, "vlmq_images_total")
    assert images == n


def test_cancel_aborts_a_running_job_inside_the_engine(
    client: httpx.Client, vllm_stack: Stack, vllm_worker: Service
) -> None:
    before = admitted(vllm_stack)
    # With its engine core paused, the job is inside the engine and stays there.
    with paused(*engine_core_processes(vllm_worker)):
        job_id = submit(client, VLLM_MODEL, seed=21, max_tokens=1900)
        wait_admitted(vllm_stack, before + 1)
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
        resp = client.post(f"/v1/jobs/{job_id}/cancel")
        assert resp.status_code == 200 and resp.json()["status"] == "cancelled"

    # Resumed, the engine frees the slot promptly (long before 1,900 tokens are generated).
    deadline = time.monotonic() + 10
    while sample(metrics(vllm_stack), "vlmq_engine_in_flight") > 0:
        assert time.monotonic() < deadline, "the request is still running in the engine"
        time.sleep(0.1)
    vllm_worker.wait_for_log(f"job {job_id}: aborted in the engine", timeout=10)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["result"] is None


def engine_core_processes(worker: Service) -> list[psutil.Process]:
    children = psutil.Process(worker.proc.pid).children(recursive=True)
    return [p for p in children if "EngineCore" in " ".join([p.name(), *p.cmdline()])]


def test_engine_death_fails_running_jobs_and_worker_recovers(
    client: httpx.Client, vllm_stack: Stack, vllm_worker: Service
) -> None:
    cores = engine_core_processes(vllm_worker)
    assert cores, "expected vLLM's engine core in a child process of the worker"
    before = admitted(vllm_stack)
    # Both jobs inside the engine together when it dies, whatever the engine's speed: the
    # worker is paused while they are submitted, so one claim takes both, and the engine
    # core is paused, so neither can finish before it is killed.
    with paused(*cores):
        with paused(psutil.Process(vllm_worker.proc.pid)):
            ids = [submit(client, VLLM_MODEL, seed=i, max_tokens=64) for i in range(2)]
        wait_admitted(vllm_stack, before + len(ids))
        # The count is taken just before the batcher hands them over, in the same thread.
        time.sleep(1)
        for proc in cores:
            proc.kill()

    # Either of them could have been the cause: neither is charged, and both run again on
    # the fresh engine and succeed within their one attempt.
    jobs = wait_all(client, ids, timeout=300)
    assert [j["status"] for j in jobs] == ["succeeded"] * len(ids), jobs
    assert all(j["attempts"] == 1 for j in jobs), jobs
    assert "retrying without counting the attempt" in vllm_worker.log_text()
    assert vllm_worker.proc.poll() is None, "the worker process died with its engine"

    # The worker loads a fresh engine and keeps serving its queue.
    after = wait_terminal(client, submit(client, VLLM_MODEL, seed=9, max_tokens=8), timeout=240)
    assert after["status"] == "succeeded", after
    new_cores = engine_core_processes(vllm_worker)
    assert new_cores and {p.pid for p in new_cores}.isdisjoint({p.pid for p in cores})
    assert VLLM_MODEL in {m["id"] for m in client.get("/v1/models").json()["data"]}


def test_engine_dying_while_idle_costs_no_job(
    client: httpx.Client, vllm_stack: Stack, vllm_worker: Service
) -> None:
    """A job that arrives after the engine died unnoticed waits for the new engine instead of failing."""
    for proc in engine_core_processes(vllm_worker):
        proc.kill()
    time.sleep(1)
    job = wait_terminal(client, submit(client, VLLM_MODEL, seed=11, max_tokens=8), timeout=240)
    assert job["status"] == "succeeded", job
    assert vllm_worker.proc.poll() is None
