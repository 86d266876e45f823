"""`vlmq demo`: start API + worker + control process, push sample images through over HTTP,
print results.

With no `VLMQ_*` URLs set it needs no servers: SQLite, a local object folder and a
folder-based broker, under the vlmq home. With them set it uses Postgres/Redis/S3 exactly
the same way. The worker runs the configured engine (vLLM by default); the images are
submitted at once so the engine runs them together, and the summary shows how many jobs
shared each step. The processes are the local stack of `vlmq up` (local_stack.py).
"""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image, ImageDraw
from prometheus_client.parser import text_string_to_metric_families

from shared.db import make_engine, make_session_factory
from shared.devtools import local_stack
from shared.migrate import upgrade_head
from shared.settings import Settings
from shared.tenancy import repo as tenancy_repo

DEFAULT_IMAGES = 16
# Short answers keep the demo quick; the batching is the same at any length.
_MAX_TOKENS = 16
_LONG_POLL_S = 5
_TERMINAL = ("succeeded", "failed", "cancelled", "expired")


@dataclass
class DemoRun:
    jobs: list[dict]
    seconds: float  # first submit to last result
    worker_metrics: dict[str, float]


def run_demo(n_images: int = DEFAULT_IMAGES) -> int:
    user_settings = Settings()
    defaults = local_stack.service_defaults(user_settings)
    settings = Settings(**defaults)
    _say(f"database {settings.database_url} | broker {settings.broker_url} | "
         f"store {settings.store_url}")
    _say(f"engine {settings.engine.value} | model {settings.model} ({settings.model_path})")
    try:
        with local_stack.stop_on_signals():
            run = _run(settings, local_stack.child_env(defaults, settings), n_images)
        if local_stack.STOP_REQUESTED.is_set():
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        _say("interrupted; services stopped")
        return 130
    _print_results(run.jobs)
    _print_summary(run, settings)
    _print_next_steps()
    return 0 if all(j["status"] == "succeeded" for j in run.jobs) else 1


def _run(settings: Settings, env: dict[str, str], n_images: int) -> DemoRun:
    local_stack.ensure_model(settings, _say)
    upgrade_head(settings)
    api_key = _demo_key(settings)
    with local_stack.local_stack(settings, env, _say, "demo") as running:
        headers = {"Authorization": f"Bearer {api_key}"}
        with httpx.Client(base_url=running.base, timeout=30, headers=headers) as client:
            local_stack.wait_ready(client, running.logs, _say, "demo")
            local_stack.wait_worker(client, settings, running.logs, _say, "demo")
            images = [sample_image(i) for i in range(n_images)]
            started = time.monotonic()
            ids = _submit_all(client, images)
            _say(f"submitted {len(ids)} jobs at once; waiting for results")
            jobs = _wait_results(client, ids, running.logs)
            seconds = time.monotonic() - started
        return DemoRun(jobs, seconds, _worker_metrics(settings.metrics_port))


def _demo_key(settings: Settings) -> str:
    """A fresh key of tenant `demo`, as an operator would make with `vlmq keys create`."""
    engine = make_engine(settings)
    try:
        with make_session_factory(engine).begin() as session:
            row, key = tenancy_repo.create_key(session, "demo", "vlmq demo", is_admin=False)
    finally:
        engine.dispose()
    _say(f"created API key {row.id} for tenant demo (`vlmq keys list` shows it)")
    return key


def _say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def sample_image(i: int) -> bytes:
    """A small synthetic picture, different per index."""
    img = Image.new("RGB", (448, 336), (30 + 50 * i % 200, 90, 160))
    draw = ImageDraw.Draw(img)
    draw.ellipse((60 + 20 * i, 60, 220 + 20 * i, 220), fill=(240, 200, 40))
    draw.rectangle((260, 150 - 10 * i, 400, 300), fill=(40, 160, 90))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _submit_all(client: httpx.Client, images: list[bytes]) -> list[str]:
    """All at once, as concurrent uploads: the worker claims them together and batches them."""
    with ThreadPoolExecutor(max_workers=min(len(images), 16) or 1) as pool:
        return list(pool.map(lambda i: _submit(client, i, images[i]), range(len(images))))


def _submit(client: httpx.Client, i: int, image: bytes) -> str:
    resp = client.post(
        "/v1/jobs",
        files={"image": (f"sample-{i}.png", image, "image/png")},
        data={"prompt": f"Describe picture {i} in one sentence.",
              "max_tokens": str(_MAX_TOKENS)},
    )
    resp.raise_for_status()
    return resp.json()["id"]


def _wait_results(client: httpx.Client, ids: list[str], logs: Path) -> list[dict]:
    """Long-polls each job in turn; they finish together, so the last answer is prompt."""
    start = time.monotonic()
    jobs: list[dict] = []
    for job_id in ids:
        job = _long_poll(client, job_id)
        while job["status"] not in _TERMINAL:
            elapsed = time.monotonic() - start
            if elapsed > local_stack.START_TIMEOUT_S:
                raise SystemExit(f"demo: job {job_id} did not finish; see {logs / 'worker.log'}")
            _say(f"{len(jobs)} of {len(ids)} jobs finished after {elapsed:.0f}s "
                 f"(worker log: {logs / 'worker.log'})")
            job = _long_poll(client, job_id)
        jobs.append(job)
    return jobs


def _long_poll(client: httpx.Client, job_id: str) -> dict:
    local_stack.check_children("demo")
    resp = client.get(f"/v1/jobs/{job_id}", params={"wait": _LONG_POLL_S})
    resp.raise_for_status()
    return resp.json()


def _worker_metrics(port: int) -> dict[str, float]:
    """The worker's Prometheus samples by name (unlabelled series; empty when metrics are off)."""
    if not port:
        return {}
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def _print_results(jobs: list[dict]) -> None:
    print("\nresults:")
    for job in jobs:
        if job["result"]:
            r = job["result"]
            print(f"  {job['id']}  {job['status']:9}  {r['prompt_tokens']}+{r['completion_tokens']} "
                  f"tokens  {r['finish_reason']:6}  {r['text'][:60]!r}")
        else:
            print(f"  {job['id']}  {job['status']:9}  {job['error']}")


def _print_summary(run: DemoRun, settings: Settings) -> None:
    done = sum(job["status"] == "succeeded" for job in run.jobs)
    print(f"\nsummary ({settings.engine.value} engine):")
    print(f"  {done} of {len(run.jobs)} images succeeded in {run.seconds:.1f}s from first "
          f"submit to last result: {done / run.seconds:.1f} images/s")
    steps = run.worker_metrics.get("vlmq_engine_batch_size_count", 0)
    if steps:
        mean = run.worker_metrics["vlmq_engine_batch_size_sum"] / steps
        print(f"  mean jobs per engine step: {mean:.1f} over {steps:.0f} steps "
              "(worker metric vlmq_engine_batch_size)")
    else:
        print("  mean jobs per engine step: unknown (the worker's metrics are off)")


def _print_next_steps() -> None:
    print(
        "\nThe demo model has random weights, so its text is noise. Next steps:\n"
        "  local stack:  vlmq up (API, worker, control process until Ctrl-C; prints the key)\n"
        "  real model:   VLMQ_MODEL=Qwen2-VL-2B-Instruct VLMQ_MODEL_PATH=/models/Qwen2-VL-2B-Instruct\n"
        "  on a GPU:     pip install -e '.[gpu]' (CUDA vLLM); VLMQ_ENGINE=vllm is the default\n"
        "  more images:  vlmq demo --images 64 (bigger batches per engine step)\n"
        "  API keys:     KEY=$(vlmq keys create --tenant myteam), then send\n"
        "                Authorization: Bearer $KEY with every /v1 request\n"
        "  Postgres:     VLMQ_DATABASE_URL=postgresql://user:pass@host:5432/vlmq\n"
        "  Redis broker: VLMQ_BROKER_URL=redis://host:6379/0\n"
        "  S3 / MinIO:   VLMQ_STORE_URL=s3://bucket/prefix VLMQ_S3_ENDPOINT_URL=http://minio:9000\n"
        "  then run `vlmq migrate` once, and `vlmq api`, `vlmq worker`, `vlmq control`,\n"
        "  and `vlmq flower` as services (or: docker compose up)\n"
    )
