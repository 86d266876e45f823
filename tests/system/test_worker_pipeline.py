"""The GPU worker's pipeline on the echo engine: bulk claims, results, poison isolation,
the job time limit, hand-back at shutdown, and one sweeper among several workers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.helpers.images import png_bytes
from tests.helpers.services import Service, fresh_database, start_worker, wait_terminal
from tests.helpers.stack import Stack
from worker.engines.echo_backend import CRASH_MARKER, ECHO_TEXT, HANG_MARKER

SWEEPER_LOG = "this process is the sweeper now"


def echo_stack(stack: Stack, **overrides: str) -> Stack:
    model = f"echo-{uuid.uuid4().hex[:6]}"
    return stack.with_env(model=model, engine="echo", echo_faults="true", **overrides)


@pytest.fixture()
def echo(stack: Stack) -> Iterator[tuple[Stack, Service]]:
    st = echo_stack(stack, max_wait_ms="300", retry_backoff_seconds="0.2")
    worker = start_worker(st.env, st.log_dir, name=f"worker-{st.settings.model}")
    yield st, worker
    worker.stop()


def submit(client: httpx.Client, model: str, prompt: str, seed: int = 0,
           **fields: str) -> str:
    resp = client.post(
        "/v1/jobs",
        files={"image": ("a.png", png_bytes(112, 84, seed=seed), "image/png")},
        data={"prompt": prompt, "model": model, "max_tokens": "8", **fields},
    )
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def submit_all(client: httpx.Client, model: str, prompts: list[str]) -> list[str]:
    def one(i: int) -> str:
        with httpx.Client(base_url=client.base_url, timeout=30, headers=client.headers) as own:
            return submit(own, model, prompts[i], seed=i)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(len(prompts))))


def test_echo_engine_runs_jobs_end_to_end(client: httpx.Client,
                                          echo: tuple[Stack, Service]) -> None:
    st, _ = echo
    ids = submit_all(client, st.settings.model, [f"job {i}" for i in range(40)])
    jobs = [wait_terminal(client, i) for i in ids]
    assert {j["status"] for j in jobs} == {"succeeded"}
    first = jobs[0]
    assert first["result"]["text"] == " ".join(ECHO_TEXT.split()[:8])
    assert first["result"]["completion_tokens"] == 8
    assert first["result"]["finish_reason"] == "length"
    # 112x84 is 4x3 patches of 28 px, plus the prompt and the template's tokens.
    assert first["result"]["prompt_tokens"] > 12
    assert all(j["attempts"] == 1 for j in jobs)


def test_a_poison_request_costs_its_batch_mates_no_attempt(
    client: httpx.Client, echo: tuple[Stack, Service]
) -> None:
    st, worker = echo
    prompts = [f"fine {i}" for i in range(5)] + [f"poison {CRASH_MARKER}"]
    ids = submit_all(client, st.settings.model, prompts)
    jobs = {i: wait_terminal(client, i, timeout=120) for i in ids}
    poison = jobs[ids[-1]]
    fine = [jobs[i] for i in ids[:-1]]

    assert [j["status"] for j in fine] == ["succeeded"] * 5, fine
    # Retried after each shared failure without paying for it.
    assert all(j["attempts"] == 1 for j in fine), [j["attempts"] for j in fine]
    assert poison["status"] == "failed"
    assert poison["error"]["code"] == "engine_error"
    assert poison["attempts"] == st.settings.max_attempts
    # It ran alone once it had been present at two engine failures.
    assert "running it alone" in worker.log_text()


def test_a_job_stuck_in_the_engine_is_aborted_and_retried(
    client: httpx.Client, stack: Stack
) -> None:
    st = echo_stack(stack, max_job_seconds="1", retry_backoff_seconds="0.2")
    worker = start_worker(st.env, st.log_dir, name=f"worker-{st.settings.model}")
    try:
        model = st.settings.model
        stuck = submit(client, model, f"never ends {HANG_MARKER}")
        fine = submit(client, model, "ends", seed=1)
        assert wait_terminal(client, fine)["status"] == "succeeded"
        job = wait_terminal(client, stuck, timeout=60)
    finally:
        worker.stop()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "job_timeout"
    assert job["attempts"] == st.settings.max_attempts
    assert "longer than 1s" in worker.log_text()


def test_a_stopping_worker_hands_its_jobs_back_without_counting_them(
    client: httpx.Client, stack: Stack
) -> None:
    st = echo_stack(stack, shutdown_grace_seconds="0.5")
    worker = start_worker(st.env, st.log_dir, name=f"worker-{st.settings.model}")
    held = submit(client, st.settings.model, f"held {HANG_MARKER}")
    deadline = time.monotonic() + 30
    while client.get(f"/v1/jobs/{held}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    worker.stop()
    job = client.get(f"/v1/jobs/{held}").json()
    assert job["status"] == "queued"
    assert job["attempts"] == 0
    assert job["error"]["code"] == "worker_stopped"


def test_one_sweeper_among_several_workers(stack: Stack) -> None:
    with fresh_database() as db_url:
        st = echo_stack(stack, database_url=db_url, sweep_seconds="0.2")
        st.migrate()
        workers = [start_worker(st.env, st.log_dir, name=f"worker-{st.settings.model}-{n}")
                   for n in range(2)]
        try:
            time.sleep(1)
            sweepers = [w for w in workers if SWEEPER_LOG in w.log_text()]
            assert len(sweepers) == 1, [w.name for w in sweepers]
            sweepers[0].stop()
            survivor = next(w for w in workers if w is not sweepers[0])
            deadline = time.monotonic() + 10
            while SWEEPER_LOG not in survivor.log_text():
                assert time.monotonic() < deadline, "no worker took over the sweeper"
                time.sleep(0.1)
        finally:
            for w in workers:
                w.stop()
