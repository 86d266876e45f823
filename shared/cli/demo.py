"""`vlmq demo`: start API + worker, push sample images through over HTTP, print results.

With no `VLMQ_*` URLs set it needs no servers: SQLite, a local object folder and a
folder-based broker. With them set it uses Postgres/Redis/S3 exactly the same way.
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
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType

import httpx
from PIL import Image, ImageDraw

from shared.migrate import upgrade_head
from shared.settings import Settings

_DEFAULT_MODEL_PATH = Settings.model_fields["model_path"].default
_START_TIMEOUT_S = 300
_PROGRESS_EVERY_S = 5.0
_STOP_TIMEOUT_S = 20
# Set by the signal handler too: its KeyboardInterrupt can land inside a finalizer or
# weakref callback, where Python prints and drops it, so the loops check this as well.
_STOP_REQUESTED = threading.Event()


def run_demo(n_images: int = 4) -> int:
    settings = Settings()
    _say(f"database {settings.database_url} | broker {settings.broker_url} | "
         f"store {settings.store_url}")
    try:
        with _stop_on_signals():
            jobs = _run(settings, n_images)
        if _STOP_REQUESTED.is_set():
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        _say("interrupted; services stopped")
        return 130
    _print_results(jobs)
    _print_next_steps()
    return 0 if all(j["status"] == "succeeded" for j in jobs) else 1


def _run(settings: Settings, n_images: int) -> list[dict]:
    _ensure_model(settings)
    upgrade_head(settings)
    port = _free_port()
    logs = Path(".vlmq/logs")
    logs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        stack.enter_context(_service("api", ["api", "--port", str(port)], logs))
        stack.enter_context(_service("worker", ["worker"], logs))
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30) as client:
            _wait_ready(client)
            ids = [_submit(client, i) for i in range(n_images)]
            _say(f"submitted {len(ids)} jobs; waiting for results (first run loads the model)")
            return [_poll(client, job_id) for job_id in ids]


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
    from shared.cli.tiny_model import MARKER, build_tiny_model

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

    def __init__(self, name: str, args: list[str], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self.log = self.log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
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


def _submit(client: httpx.Client, i: int) -> str:
    resp = client.post(
        "/v1/jobs",
        files={"image": (f"sample-{i}.png", sample_image(i), "image/png")},
        data={"prompt": f"Describe picture {i} in one sentence.", "max_tokens": "24"},
    )
    resp.raise_for_status()
    return resp.json()["id"]


def _poll(client: httpx.Client, job_id: str) -> dict:
    start = time.monotonic()
    deadline = start + _START_TIMEOUT_S
    next_progress = start + _PROGRESS_EVERY_S
    last = None
    while time.monotonic() < deadline:
        _check_children()
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] != last:
            _say(f"job {job_id[:8]} {job['status']}")
            last = job["status"]
        if job["status"] in ("succeeded", "failed", "cancelled", "expired"):
            return job
        now = time.monotonic()
        if now >= next_progress:
            _say(f"job {job_id[:8]} still {job['status']} after {now - start:.0f}s "
                 f"(worker log: .vlmq/logs/worker.log)")
            next_progress = now + _PROGRESS_EVERY_S
        time.sleep(0.2)
    raise SystemExit(f"demo: job {job_id} did not finish; see .vlmq/logs/worker.log")


def _print_results(jobs: list[dict]) -> None:
    print("\nresults:")
    for job in jobs:
        if job["result"]:
            r = job["result"]
            print(f"  {job['id']}  {job['status']:9}  {r['prompt_tokens']}+{r['completion_tokens']} "
                  f"tokens  {r['finish_reason']:6}  {r['text'][:60]!r}")
        else:
            print(f"  {job['id']}  {job['status']:9}  {job['error']}")


def _print_next_steps() -> None:
    print(
        "\nThe demo model has random weights, so its text is noise. Next steps:\n"
        "  real model:   VLMQ_MODEL=Qwen2-VL-2B-Instruct VLMQ_MODEL_PATH=/models/Qwen2-VL-2B-Instruct "
        "VLMQ_ENGINE=vllm\n"
        "  Postgres:     VLMQ_DATABASE_URL=postgresql://user:pass@host:5432/vlmq\n"
        "  Redis broker: VLMQ_BROKER_URL=redis://host:6379/0\n"
        "  S3 / MinIO:   VLMQ_STORE_URL=s3://bucket/prefix VLMQ_S3_ENDPOINT_URL=http://minio:9000\n"
        "  then run `vlmq migrate` once, and `vlmq api`, `vlmq worker`, `vlmq flower` as\n"
        "  services (or: docker compose up)\n"
    )
