"""Real services for the tests: a fresh Postgres database, Redis, a moto S3 server, and
`vlmq` processes (API, worker, control) started as subprocesses exactly as a user starts them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import redis

PG_ADMIN_URL = os.environ.get("VLMQ_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("VLMQ_TEST_REDIS", "redis://127.0.0.1:6379/0")


def create_api_key(database_url: str, tenant: str = "tests", admin: bool = False) -> str:
    """A new API key, made as `vlmq keys create` makes one."""
    from shared.db import make_engine, make_session_factory
    from shared.settings import Settings
    from shared.tenancy import repo as tenancy_repo

    engine = make_engine(Settings(database_url=database_url))
    try:
        with make_session_factory(engine)() as session:
            _, key = tenancy_repo.create_key(session, tenant, "tests", admin)
            session.commit()
            return key
    finally:
        engine.dispose()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def fresh_database() -> Iterator[str]:
    name = f"vlmq_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def moto_server(log_dir: Path) -> Iterator[str]:
    port = free_port()
    log = (log_dir / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/moto-api/", proc, timeout=60)
        yield url
    finally:
        stop(proc)
        log.close()


class Service:
    """A `vlmq <command>` child process with its own log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_text():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_text()[-4000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"{self.name}: no {needle!r} in log:\n{self.log_text()[-4000:]}")

    def stop(self) -> None:
        stop(self.proc)
        self._log.close()

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_http(url: str, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout}s")


def start_api(env: dict[str, str], log_dir: Path, name: str = "api",
              cwd: Path | None = None) -> tuple[Service, str]:
    port = free_port()
    svc = Service(name, ["api", "--port", str(port)], env, log_dir, cwd)
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/healthz", svc.proc, timeout=60)
    return svc, base


def start_worker(env: dict[str, str], log_dir: Path, name: str = "worker",
                 timeout: float = 300, cwd: Path | None = None) -> Service:
    svc = Service(name, ["worker"], env, log_dir, cwd)
    svc.wait_for_log(" ready.", timeout=timeout)
    return svc


def wait_terminal(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled", "expired"):
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} not terminal after {timeout}s: {job}")


class RedisServer:
    """A private, non-persistent Redis, so restarting it disturbs no other test."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--logfile", str(self.log_dir / f"redis-{self.port}.log")],
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis.from_url(self.url).ping():
                    return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "private redis-server did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


def start_control(env: dict[str, str], log_dir: Path, name: str = "control") -> Service:
    """`vlmq control`: sweeper, batch work and (with a signing secret) webhook delivery."""
    svc = Service(name, ["control"], env, log_dir)
    svc.wait_for_log(" ready.", timeout=60)
    return svc
