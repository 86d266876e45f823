"""A model scaled to zero and back, as the Kubernetes deployment runs it (KEDA takes the
model's workers to none when idle): an API that accepts the model with no worker live
queues its jobs, each says it waits for a worker, with the model's last cold start as its
estimate once one was measured, and the next worker to start takes them. The worker's
start-up time and the model's cold start are metrics (the worker's while it lives, the
control process's always). Real API, control and echo worker processes, Postgres, Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers.images import png_bytes
from tests.helpers.services import (
    Service,
    free_port,
    start_api,
    start_control,
    start_worker,
    wait_terminal,
)
from tests.helpers.stack import Stack


@pytest.fixture(scope="module")
def zero(stack: Stack) -> Iterator[tuple[Stack, str]]:
    model = f"zero-{uuid.uuid4().hex[:6]}"
    st = stack.with_env(model=model, engine="echo", accepted_models=json.dumps([model]))
    api, base = start_api(st.env, st.log_dir, name="api-scale-to-zero")
    yield st, base
    api.stop()


def submit(client: httpx.Client, model: str) -> str:
    resp = client.post("/v1/jobs", files={"image": ("a.png", png_bytes(32, 32), "image/png")},
                       data={"prompt": "Describe it.", "model": model, "max_tokens": "4"})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def metric(port: int, name: str, **labels: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in the metrics:\n{text[-2000:]}")


def worker(st: Stack, port: int) -> Service:
    return start_worker(st.with_env(metrics_port=str(port)).env, st.log_dir,
                        name=f"worker-{st.settings.model}")


def test_a_model_with_no_worker_queues_its_jobs_until_one_starts(
    zero: tuple[Stack, str],
) -> None:
    st, base = zero
    model = st.settings.model
    with httpx.Client(base_url=base, headers=st.headers, timeout=30) as client:
        first = submit(client, model)
        waiting = client.get(f"/v1/jobs/{first}").json()
        assert (waiting["status"], waiting["waiting_for_worker"]) == ("queued", True), waiting
        assert waiting["eta_seconds"] is None  # no cold start of this model measured yet

        port = free_port()
        svc = worker(st, port)
        try:
            assert wait_terminal(client, first, timeout=60)["status"] == "succeeded"
            startup = metric(port, "vlmq_worker_startup_seconds")
        finally:
            svc.stop()
        assert 0 < startup < 300

        # Scaled to zero: accepted all the same, and the estimate is the last cold start.
        second = submit(client, model)
        waiting = client.get(f"/v1/jobs/{second}").json()
        assert waiting["waiting_for_worker"] is True, waiting
        assert waiting["eta_seconds"] == pytest.approx(startup, abs=0.01)
        control_port = free_port()
        control = start_control(st.with_env(metrics_port=str(control_port)).env, st.log_dir,
                                name="control-scale-to-zero")
        try:
            cold = metric(control_port, "vlmq_model_cold_start_seconds", model=model)
            assert cold == pytest.approx(startup, abs=0.01)
            assert metric(control_port, "vlmq_workers_live", model=model) == 0
            assert metric(control_port, "vlmq_queue_depth", model=model, priority="5") == 1
        finally:
            control.stop()

        svc = worker(st, free_port())
        try:
            done = wait_terminal(client, second, timeout=60)
        finally:
            svc.stop()
        assert done["status"] == "succeeded" and done["attempts"] == 1
