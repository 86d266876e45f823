"""The usage ledger on a real stack (API, echo worker simulating a GPU engine, control
process): after jobs that succeed, fail in the engine, are cancelled and expire, submitted
by two tenants through the API, the ledger read by GET /v1/usage and `vlmq usage --csv`
equals what the jobs table says; a tenant sees only its own; and the jobs' engine seconds
add up to the worker's measured engine step time."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from shared.db import sqlalchemy_url
from tests.helpers.images import png_bytes
from tests.helpers.services import (
    bearer,
    create_api_key,
    free_port,
    fresh_database,
    start_api,
    start_control,
    start_worker,
    wait_terminal,
)
from tests.helpers.stack import Stack
from worker.engines.echo_backend import CRASH_MARKER

PARKED = "parked"  # accepted, served by no worker: its jobs wait to be cancelled or expire


@dataclass
class UsageStack:
    stack: Stack
    base: str
    model: str
    worker_metrics: str  # the worker's /metrics URL
    keys: dict[str, str]  # tenant (or "admin") -> API key


@pytest.fixture(scope="module")
def usage_stack(stack: Stack) -> Iterator[UsageStack]:
    """A database of its own, so the ledger holds only this module's jobs; the echo engine
    simulating a GPU (each step takes real time) and playing faults; one attempt a job, so
    an engine failure is the job's final outcome."""
    model = f"echo-{uuid.uuid4().hex[:6]}"
    with fresh_database() as db_url, ExitStack() as started:
        st = stack.with_env(
            database_url=db_url, model=model, engine="echo", echo_faults="true",
            echo_step_ms="4", max_num_seqs="8", max_batch_size="8", max_attempts="1",
            queue_prefix=f"vlmqusage{uuid.uuid4().hex[:6]}", sweep_seconds="0.2",
            accepted_models=f'["{PARKED}"]').migrate()
        api, base = start_api(st.env, st.log_dir, name="api-usage")
        started.callback(api.stop)
        port = free_port()
        worker = start_worker(st.with_env(metrics_port=str(port)).env, st.log_dir,
                              name=f"worker-{model}")
        started.callback(worker.stop)
        control = start_control(st.env, st.log_dir, name="control-usage")
        started.callback(control.stop)
        keys = {"tests": st.api_key, "other": create_api_key(db_url, tenant="other"),
                "admin": create_api_key(db_url, tenant="ops", admin=True)}
        yield UsageStack(st, base, model, f"http://127.0.0.1:{port}/metrics", keys)


def _submit(client: httpx.Client, model: str, n: int, prompt: str = "What is this?",
            **fields: str) -> str:
    resp = client.post("/v1/jobs", files={"image": ("a.png", png_bytes(56 * (1 + n % 3), 56,
                                                                       seed=n), "image/png")},
                       data={"prompt": prompt, "model": model, "max_tokens": str(2 + n % 5),
                             **fields})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def _step_seconds(us: UsageStack) -> float:
    for family in text_string_to_metric_families(httpx.get(us.worker_metrics).text):
        for s in family.samples:
            if s.name == "vlmq_engine_step_seconds_total":
                return s.value
    raise AssertionError("the worker exports no vlmq_engine_step_seconds_total")


def _usage(us: UsageStack, key: str, **params: str) -> dict:
    resp = httpx.get(f"{us.base}/v1/usage", params=params, headers=bearer(us.keys[key]))
    assert resp.status_code == 200, resp.text
    return resp.json()


def _from_jobs(us: UsageStack) -> dict[tuple[str, str], dict[str, float]]:
    """The ledger's counters per tenant and model, as the jobs table gives them."""
    engine = create_engine(sqlalchemy_url(us.stack.settings))
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("""
                SELECT tenant_id, model, count(*) AS accepted,
                       count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
                       count(*) FILTER (WHERE status = 'failed') AS failed,
                       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
                       count(*) FILTER (WHERE status = 'expired') AS expired,
                       count(*) FILTER (WHERE image_key IS NOT NULL
                                        OR image_url IS NOT NULL) AS images,
                       coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
                       coalesce(sum(image_tokens), 0) AS image_tokens,
                       coalesce(sum(completion_tokens), 0) AS completion_tokens,
                       coalesce(sum(engine_seconds), 0) AS engine_seconds
                FROM jobs GROUP BY tenant_id, model""")).mappings().all()
    finally:
        engine.dispose()
    return {(r["tenant_id"], r["model"]): {k: float(v) for k, v in r.items()
                                           if k not in ("tenant_id", "model")} for r in rows}


def _as_numbers(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k not in ("tenant", "model", "day")}


def test_engine_seconds_add_up_to_the_measured_engine_time(usage_stack: UsageStack) -> None:
    """Only successes here: an attempt that fails in the engine spent engine time that no
    job is charged for, so the comparison is exact only without them."""
    us = usage_stack
    with httpx.Client(base_url=us.base, headers=bearer(us.keys["tests"]), timeout=30) as c:
        ids = list(ThreadPoolExecutor(8).map(lambda n: _submit(c, us.model, n), range(48)))
        assert {wait_terminal(c, i)["status"] for i in ids} == {"succeeded"}
    measured = _step_seconds(us)
    charged = _usage(us, "admin")["total"]["engine_seconds"]
    assert measured > 0.1  # 48 jobs of 2 to 6 steps of 4 ms, 8 at most at once
    assert charged == pytest.approx(measured, rel=0.05), (charged, measured)


def test_mixed_outcomes_add_up_and_a_tenant_sees_its_own(usage_stack: UsageStack) -> None:
    us = usage_stack
    tests = httpx.Client(base_url=us.base, headers=bearer(us.keys["tests"]), timeout=30)
    other = httpx.Client(base_url=us.base, headers=bearer(us.keys["other"]), timeout=30)
    with tests, other:
        ran = [_submit(tests, us.model, n) for n in range(6)]
        ran += [_submit(other, us.model, n) for n in range(3)]
        crashed = _submit(tests, us.model, 0, prompt=f"{CRASH_MARKER} what is this?")
        cancelled = _submit(tests, PARKED, 1)
        assert tests.post(f"/v1/jobs/{cancelled}/cancel").status_code == 200
        expiring = _submit(other, PARKED, 2, max_queue_seconds="1")
        waiting = _submit(other, PARKED, 3)  # queued: accepted, no outcome yet
        ended = {i: wait_terminal(tests if i != expiring else other, i)["status"]
                 for i in [*ran[:6], crashed, cancelled]}
        ended |= {i: wait_terminal(other, i)["status"] for i in [*ran[6:], expiring]}
    assert [ended[i] for i in (crashed, cancelled, expiring)] == [
        "failed", "cancelled", "expired"]
    assert waiting not in ended

    expected = _from_jobs(us)
    everyone = _usage(us, "admin")
    assert {(r["tenant"], r["model"]): _as_numbers(r) for r in everyone["data"]} == {
        key: pytest.approx(want) for key, want in expected.items()}
    assert {(r["tenant"], r["model"]) for r in everyone["data"]} == {
        ("tests", us.model), ("tests", PARKED), ("other", us.model), ("other", PARKED)}
    own = _usage(us, "other", tenant="tests")  # `tenant` is for admins only
    assert {r["tenant"] for r in own["data"]} == {"other"}
    assert own["total"]["accepted"] == sum(want["accepted"] for (tenant, _), want
                                           in expected.items() if tenant == "other") == 5
    assert _usage(us, "admin", tenant="other")["data"] == own["data"]
    by_day = _usage(us, "tests", group_by="day")["data"]
    assert len(by_day) == 1 and by_day[0]["failed"] == 1 and by_day[0]["cancelled"] == 1

    cli = subprocess.run([sys.executable, "-m", "shared.cli", "usage", "--csv"],
                         env=us.stack.env, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    lines = list(csv.DictReader(io.StringIO(cli.stdout)))
    assert {(r["tenant"], r["model"]): _as_numbers(r) for r in lines} == {
        key: pytest.approx(want, abs=1e-5) for key, want in expected.items()}

