"""A local stack of `vlmq` processes (API, worker, control process, Flower when asked) on
one machine, as `vlmq up` runs it and `vlmq demo` borrows it: each a child process logging
to a file under the vlmq home, all stopped together on Ctrl-C, SIGTERM or SIGHUP.

With no `VLMQ_*` URLs set it needs no servers: SQLite, a local object folder and the folder
broker, all under the vlmq home (shared/home.py). With them set it uses Postgres, Redis and
S3 exactly the same way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx

from shared import home
from shared.settings import EngineKind, Settings

START_TIMEOUT_S = 300
PROGRESS_EVERY_S = 5.0
STOP_TIMEOUT_S = 20
# Set by the signal handler too: its KeyboardInterrupt can land inside a finalizer or
# weakref callback, where Python prints and drops it, so the loops check this as well.
STOP_REQUESTED = threading.Event()

Say = Callable[[str], None]


def service_defaults(settings: Settings) -> dict[str, object]:
    """Settings the local stack gives its services where the user has not chosen them."""
    # The summary and `vlmq up` read the worker's own metrics.
    defaults: dict[str, object] = {"metrics_port": free_port()}
    if settings.engine == EngineKind.vllm and settings.model_path == home.default_model_path():
        # The bundled model is tiny: compiling it gains nothing, and on vLLM's CPU build the
        # compilation (inductor) adds most of a minute to the engine's start.
        defaults["enforce_eager"] = True
    return {k: v for k, v in defaults.items() if k not in settings.model_fields_set}


def child_env(defaults: dict[str, object], settings: Settings) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           # Children resolve the same home whatever folder they start in.
           home.HOME_VARIABLE: str(home.vlmq_home())}
    env.update({f"VLMQ_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
                for k, v in defaults.items()})
    if settings.model_path == home.default_model_path():
        # The bundled model is a local folder: nothing to ask a model hub, which a demo
        # machine may not reach (lookups would stall on network timeouts).
        env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def ensure_model(settings: Settings, say: Say) -> None:
    """Only the default path is built here: any other path is the user's own model."""
    if settings.model_path != home.default_model_path():
        return
    from shared.devtools.tiny_model import MARKER, build_tiny_model

    path = Path(settings.model_path)
    if not (path / MARKER).exists():
        say(f"building the tiny random-weight test model in {path} (offline, a few seconds)")
    build_tiny_model(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so the `with` blocks stop the child services.

    After the first signal the rest are ignored: a second Ctrl-C must not cut the cleanup
    short and leave the children running.
    """
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        for sig in signals:
            signal.signal(sig, signal.SIG_IGN)
        STOP_REQUESTED.set()
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Service:
    """A `vlmq` sub-command run as a child process, logging to a file, stopped on exit.

    Each child leads its own process group, so stopping it also stops anything it spawned
    (engine processes), whatever way the stack ends.
    """

    def __init__(self, name: str, args: list[str], logs: Path, env: dict[str, str],
                 say: Say) -> None:
        self.name = name
        self.say = say
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
        say(f"started {name} (pid {self.proc.pid}, log {self.log_path})")

    def __enter__(self) -> Service:
        _RUNNING.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _RUNNING.remove(self)
        try:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.say(f"{self.name} did not stop in {STOP_TIMEOUT_S}s; killing it")
            self._signal(signal.SIGKILL)  # leftovers of the group, if any
            self.proc.wait()
        finally:
            self.log.close()
        self.say(f"stopped {self.name}")

    def _signal(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass


_RUNNING: list[Service] = []


def check_children(prefix: str) -> None:
    """Raises KeyboardInterrupt on a stop request, SystemExit when a child has died."""
    if STOP_REQUESTED.is_set():
        raise KeyboardInterrupt
    for svc in _RUNNING:
        if svc.proc.poll() is not None:
            tail = svc.log_path.read_text(errors="replace")[-3000:]
            raise SystemExit(f"{prefix}: {svc.name} exited with {svc.proc.returncode}:\n{tail}")


@dataclass
class Running:
    base: str  # the API's URL
    logs: Path
    services: list[Service]


@contextmanager
def local_stack(settings: Settings, env: dict[str, str], say: Say, prefix: str,
                port: int | None = None, flower_port: int | None = None) -> Iterator[Running]:
    """API, worker and control process (and Flower with `flower_port`), stopped on exit."""
    port = port or free_port()
    logs = home.logs_folder()
    logs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        services = [
            stack.enter_context(Service("api", ["api", "--port", str(port)], logs, env, say)),
            stack.enter_context(Service("worker", ["worker"], logs, env, say)),
            # Sweeper and batch work (/v1/batches); its metrics stay off, as the worker's
            # port is the one the summary reads.
            stack.enter_context(Service("control", ["control"], logs,
                                        {**env, "VLMQ_METRICS_PORT": "0"}, say)),
        ]
        if flower_port:
            services.append(stack.enter_context(Service(
                "flower", ["flower", "--port", str(flower_port)], logs, env, say)))
        yield Running(f"http://127.0.0.1:{port}", logs, services)


def wait_ready(client: httpx.Client, logs: Path, say: Say, prefix: str) -> None:
    start = time.monotonic()
    deadline = start + START_TIMEOUT_S
    next_progress = start + PROGRESS_EVERY_S
    while time.monotonic() < deadline:
        check_children(prefix)
        try:
            if client.get("/readyz").status_code == 200:
                say("API is ready")
                return
        except httpx.TransportError:
            pass
        now = time.monotonic()
        if now >= next_progress:
            say(f"waiting for the API to be ready ({now - start:.0f}s)")
            next_progress = now + PROGRESS_EVERY_S
        time.sleep(0.3)
    raise SystemExit(f"{prefix}: the API did not become ready; see {logs / 'api.log'}")


def wait_worker(client: httpx.Client, settings: Settings, logs: Path, say: Say,
                prefix: str) -> None:
    """Waits until the worker has loaded its engine: a job submitted now runs at once.

    A worker registers (and `/v1/models` lists it) once its engine is resident.
    """
    start = time.monotonic()
    next_progress = start + PROGRESS_EVERY_S
    say(f"loading the {settings.engine.value} engine in the worker "
        "(about a minute on a small CPU)")
    while time.monotonic() < start + START_TIMEOUT_S:
        check_children(prefix)
        models = client.get("/v1/models").json()["data"]
        if any(m["id"] == settings.model and m["workers"] for m in models):
            say(f"worker is ready ({time.monotonic() - start:.0f}s)")
            return
        now = time.monotonic()
        if now >= next_progress:
            say(f"still loading the engine ({now - start:.0f}s; log {logs / 'worker.log'})")
            next_progress = now + PROGRESS_EVERY_S
        time.sleep(0.3)
    raise SystemExit(f"{prefix}: the worker did not become ready; see {logs / 'worker.log'}")
