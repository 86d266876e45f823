"""`vlmq demo`: start API + worker + control process, push sample images through over HTTP,
print results.

With no `VLMQ_*` URLs set it needs no servers: SQLite, a local object folder and a
folder-based broker. With them set it uses Postgres/Redis/S3 exactly the same way. The
worker runs the configured engine (vLLM by default); the images are submitted at once so
the engine runs them together, and the summary shows how many jobs shared each step.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx
from PIL import Image, ImageDraw
from prometheus_client.parser import text_string_to_metric_families

from shared.db import make_engine, make_session_factory
from shared.migrate import upgrade_head
from shared.settings import EngineKind, Settings
from shared.tenancy import repo as tenancy_repo

DEFAULT_IMAGES = 16
_DEFAULT_MODEL_PATH = Settings.model_fields["model_path"].default
# Short answers keep the demo quick; the batching is the same at any length.
_MAX_TOKENS = 16
_START_TIMEOUT_S = 300
_PROGRESS_EVERY_S = 5.0
_LONG_POLL_S = 5
_STOP_TIMEOUT_S = 20
_TERMINAL = ("succeeded", "failed", "cancelled", "expired")
# Set by the signal handler too: its KeyboardInterrupt can land inside a finalizer or
# weakref callback, where Python prints and drops it, so the loops check this as well.
_STOP_REQUESTED = threading.Event()


@dataclass
class DemoRun:
    jobs: list[dict]
    seconds: float  # first submit to last result
    worker_metrics: dict[str, float]


def run_demo(n_images: int = DEFAULT_IMAGES) -> int:
    user_settings = Settings()
    defaults = _service_defaults(user_settings)
    settings = Settings(**defaults)
    _say(f"database {settings.database_url} | broker {settings.broker_url} | "
         f"store {settings.store_url}")
    _say(f"engine {settings.engine.value} | model {settings.model} ({settings.model_path})")
    try:
        with _stop_on_signals():
            run = _run(settings, _child_env(defaults, settings), n_images)
        if _STOP_REQUESTED.is_set():
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        _say("interrupted; services stopped")
        return 130
    _print_results(run.jobs)
    _print_summary(run, settings)
    _print_next_steps()
    return 0 if all(j["status"] == "succeeded" for j in run.jobs) else 1


def _service_defaults(settings: Settings) -> dict[str, object]:
    """Settings the demo gives its services where the user has not chosen them."""
    # The summary reads the worker's own count of jobs per engine step.
    defaults: dict[str, object] = {"metrics_port": _free_port()}
    if settings.engine == EngineKind.vllm and settings.model_path == _DEFAULT_MODEL_PATH:
        # The bundled model is tiny: compiling it gains nothing, and on vLLM's CPU build the
        # compilation (inductor) adds most of a minute to the engine's start.
        defaults["enforce_eager"] = True
    return {k: v for k, v in defaults.items() if k not in settings.model_fields_set}


def _child_env(defaults: dict[str, object], settings: Settings) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.update({f"VLMQ_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
                for k, v in defaults.items()})
    if settings.model_path == _DEFAULT_MODEL_PATH:
        # The bundled model is a local folder: nothing to ask a model hub, which a demo
        # machine may not reach (lookups would stall on network timeouts).
        env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _run(settings: Settings, env: dict[str, str], n_images: int) -> DemoRun:
    _ensure_model(settings)
    upgrade_head(settings)
    api_key = _demo_key(settings)
    port = _free_port()
    logs = Path(".vlmq/logs")
    logs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        stack.enter_context(_service("api", ["api", "--port", str(port)], logs, env))
        stack.enter_context(_service("worker", ["worker"], logs, env))
        # Sweeper and batch work (/v1/batches); its metrics stay off, as the worker's
        # port is the one the summary reads.
        stack.enter_context(_service("control", ["control"], logs,
                                     {**env, "VLMQ_METRICS_PORT": "0"}))
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {api_key}"}
        with httpx.Client(base_url=base, timeout=30, headers=headers) as client:
            _wait_ready(client)
            _wait_worker(client, settings)
            images = [sample_image(i) for i in range(n_images)]
            started = time.monotonic()
            ids = _submit_all(client, images)
            _say(f"submitted {len(ids)} jobs at once; waiting for results")
            jobs = _wait_results(client, ids)
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


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so the `with` blocks stop the child services.

    After the first signal the rest are ignored: a second Ctrl-C must not cut the cleanup
    short and leave the children running.
    """
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        for sig in signals:
            signal.signal(sig, signal.SIG_IGN)
        _STOP_REQUESTED.set()
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def _ensure_model(settings: Settings) -> None:
    """Only the default path is built here: any other path is the user's own model."""
    if settings.model_path != _DEFAULT_MODEL_PATH:
        return
    from shared.devtools.tiny_model import MARKER, build_tiny_model

    path = Path(settings.model_path)
    if not (path / MARKER).exists():
        _say(f"building the tiny random-weight test model in {path} (offline, a few seconds)")
    build_tiny_model(path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _service:
    """A `vlmq` sub-command run as a child process, logging to a file, stopped on exit.

    Each child leads its own process group, so stopping it also stops anything it spawned
    (engine processes), whatever way the demo ends.
    """

    def __init__(self, name: str, args: list[str], logs: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        _say(f"started {name} (pid {self.proc.pid}, log {self.log_path})")

    def __enter__(self) -> _service:
        _RUNNING.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _RUNNING.remove(self)
        try:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _say(f"{self.name} did not stop in {_STOP_TIMEOUT_S}s; killing it")
            self._signal(signal.SIGKILL)  # leftovers of the group, if any
            self.proc.wait()
        finally:
            self.log.close()
        _say(f"stopped {self.name}")

    def _signal(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass


_RUNNING: list[_service] = []


def _check_children() -> None:
    if _STOP_REQUESTED.is_set():
        raise KeyboardInterrupt
    for svc in _RUNNING:
        if svc.proc.poll() is not None:
            tail = svc.log_path.read_text(errors="replace")[-3000:]
            raise SystemExit(f"demo: {svc.name} exited with {svc.proc.returncode}:\n{tail}")


def _wait_ready(client: httpx.Client) -> None:
    start = time.monotonic()
    deadline = start + _START_TIMEOUT_S
    next_progress = start + _PROGRESS_EVERY_S
    while time.monotonic() < deadline:
        _check_children()
        try:
            if client.get("/readyz").status_code == 200:
                _say("API is ready")
                return
        except httpx.TransportError:
            pass
        now = time.monotonic()
        if now >= next_progress:
            _say(f"waiting for the API to be ready ({now - start:.0f}s)")
            next_progress = now + _PROGRESS_EVERY_S
        time.sleep(0.3)
    raise SystemExit("demo: the API did not become ready; see .vlmq/logs/api.log")


def sample_image(i: int) -> bytes:
    """A small synthetic picture, different per index."""
    img = Image.new("RGB", (448, 336), (30 + 50 * i % 200, 90, 160))
    draw = ImageDraw.Draw(img)
    draw.ellipse((60 + 20 * i, 60, 220 + 20 * i, 220), fill=(240, 200, 40))
    draw.rectangle((260, 150 - 10 * i, 400, 300), fill=(40, 160, 90))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _wait_worker(client: httpx.Client, settings: Settings) -> None:
    """Waits until the worker has loaded its engine, so the timing measures inference only.

    A worker registers (and `/v1/models` lists it) once its engine is resident.
    """
    start = time.monotonic()
    next_progress = start + _PROGRESS_EVERY_S
    _say(f"loading the {settings.engine.value} engine in the worker "
         "(about a minute on a small CPU)")
    while time.monotonic() < start + _START_TIMEOUT_S:
        _check_children()
        models = client.get("/v1/models").json()["data"]
        if any(m["id"] == settings.model and m["workers"] for m in models):
            _say(f"worker is ready ({time.monotonic() - start:.0f}s)")
            return
        now = time.monotonic()
        if now >= next_progress:
            _say(f"still loading the engine ({now - start:.0f}s; log .vlmq/logs/worker.log)")
            next_progress = now + _PROGRESS_EVERY_S
        time.sleep(0.3)
    raise SystemExit("demo: the worker did not become ready; see .vlmq/logs/worker.log")


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


def _wait_results(client: httpx.Client, ids: list[str]) -> list[dict]:
    """Long-polls each job in turn; they finish together, so the last answer is prompt."""
    start = time.monotonic()
    jobs: list[dict] = []
    for job_id in ids:
        job = _long_poll(client, job_id)
        while job["status"] not in _TERMINAL:
            elapsed = time.monotonic() - start
            if elapsed > _START_TIMEOUT_S:
                raise SystemExit(f"demo: job {job_id} did not finish; see .vlmq/logs/worker.log")
            _say(f"{len(jobs)} of {len(ids)} jobs finished after {elapsed:.0f}s "
                 f"(worker log: .vlmq/logs/worker.log)")
            job = _long_poll(client, job_id)
        jobs.append(job)
    return jobs


def _long_poll(client: httpx.Client, job_id: str) -> dict:
    _check_children()
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
