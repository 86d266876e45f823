"""`vlmq demo`: start API + worker, push sample images through over HTTP, print results.

With no `VLMQ_*` URLs set it needs no servers: SQLite, a local object folder and a
folder-based broker. With them set it uses Postgres/Redis/S3 exactly the same way.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

from shared.migrate import upgrade_head
from shared.settings import Settings

_DEFAULT_MODEL_PATH = Settings.model_fields["model_path"].default
_START_TIMEOUT_S = 300


def run_demo(n_images: int = 4) -> int:
    settings = Settings()
    _say(f"database {settings.database_url} | broker {settings.broker_url} | "
         f"store {settings.store_url}")
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
            jobs = [_poll(client, job_id) for job_id in ids]
    _print_results(jobs)
    _print_next_steps()
    return 0 if all(j["status"] == "succeeded" for j in jobs) else 1


def _say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def _ensure_model(settings: Settings) -> None:
    path = Path(settings.model_path)
    if path.exists() or settings.model_path != _DEFAULT_MODEL_PATH:
        return
    from shared.tiny_model import build_tiny_model

    _say(f"building the tiny random-weight test model in {path} (offline, a few seconds)")
    build_tiny_model(path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _service:
    """A `vlmq` sub-command run as a child process, logging to a file, stopped on exit."""

    def __init__(self, name: str, args: list[str], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
        )
        _say(f"started {name} (pid {self.proc.pid}, log {self.log_path})")

    def __enter__(self) -> _service:
        _RUNNING.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _RUNNING.remove(self)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


_RUNNING: list[_service] = []


def _check_children() -> None:
    for svc in _RUNNING:
        if svc.proc.poll() is not None:
            tail = svc.log_path.read_text(errors="replace")[-3000:]
            raise SystemExit(f"demo: {svc.name} exited with {svc.proc.returncode}:\n{tail}")


def _wait_ready(client: httpx.Client) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        _check_children()
        try:
            if client.get("/readyz").status_code == 200:
                _say("API is ready")
                return
        except httpx.TransportError:
            pass
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
    deadline = time.monotonic() + _START_TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        _check_children()
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] != last:
            _say(f"job {job_id[:8]} {job['status']}")
            last = job["status"]
        if job["status"] in ("succeeded", "failed", "cancelled", "expired"):
            return job
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
        "  then: vlmq migrate && vlmq api & vlmq worker &   (or: docker compose up)\n"
    )
