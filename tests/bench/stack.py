"""A private deployment per arm: fresh database, its own queues, a store, and the processes
the arm asks for, all torn down (Redis keys included) when the arm ends."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import redis

from shared.migrate import upgrade_head
from shared.settings import Settings
from tests.bench.workload import Workload
from tests.helpers.services import (
    REDIS_URL,
    Service,
    bearer,
    create_api_key,
    fresh_database,
    moto_server,
    start_api,
    start_worker,
)

# Jobs of this model wait in Postgres and no worker serves it: the API-only arms hold
# polls on them, and the long-poll arm hands them to a worker when it chooses.
PARKED_MODEL = "parked"
# Every job of a bench run, through the API or preloaded, belongs to this tenant, so the
# stack's key can read the preloaded ones too.
TENANT = "bench"


@dataclass
class Stack:
    env: dict[str, str]
    settings: Settings
    log_dir: Path
    api_key: str  # of TENANT
    services: list[Service] = field(default_factory=list)
    # With the S3 store: the moto server's pid and the niceness it runs at.
    moto_pid: int | None = None
    moto_nice: int | None = None

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.api_key)

    def start_api(self) -> tuple[Service, str]:
        api, base = start_api(self.env, self.log_dir)
        self.services.append(api)
        return api, base

    def start_worker(self, engine: str, ready: bool = True) -> Service:
        """With `ready` False it returns at once: arms that time from the first claim
        must not miss claims made before the worker logs that it is ready."""
        env = {**self.env, "VLMQ_ENGINE": engine}
        if ready:
            worker = start_worker(env, self.log_dir, name=f"worker-{engine}")
        else:
            worker = Service(f"worker-{engine}", ["worker"], env, self.log_dir)
        self.services.append(worker)
        return worker

    def stop(self, service: Service) -> None:
        self.services.remove(service)
        service.stop()

    def parked(self) -> Settings:
        """Settings whose `model` is the parked one, for preloading jobs nobody claims."""
        return self.settings.model_copy(update={"model": PARKED_MODEL})


def alive(service: Service) -> None:
    """Raises when the service exited: a drain must not wait out its timeout on a dead worker."""
    if service.proc.poll() is not None:
        raise RuntimeError(f"{service.name} exited:\n{service.log_text()[-3000:]}")


def settings_from_env(env: dict[str, str]) -> Settings:
    # List settings travel as JSON in the environment, as pydantic-settings reads them.
    return Settings(**{k[5:].lower(): json.loads(v) if v.startswith("[") else v
                       for k, v in env.items() if k.startswith("VLMQ_")})


@contextmanager
def stack(w: Workload, log_dir: Path, store: str = "file",
          settings: dict[str, str] | None = None) -> Iterator[Stack]:
    """`store` is "file" (a temporary folder) or "s3" (a moto server of its own);
    `settings` (VLMQ_* variables) override the stack's own."""
    log_dir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    with ExitStack() as cleanup:
        db_url = cleanup.enter_context(fresh_database())
        env = {k: v for k, v in os.environ.items() if not k.startswith("VLMQ_")}
        env.update(
            w.worker_env(),
            VLMQ_DATABASE_URL=db_url,
            VLMQ_BROKER_URL=REDIS_URL,
            VLMQ_MODEL="bench",
            VLMQ_ACCEPTED_MODELS=json.dumps([PARKED_MODEL]),
            VLMQ_QUEUE_PREFIX=f"vlmqbench{tag}",
            HF_HUB_OFFLINE="1",
            VLLM_CPU_KVCACHE_SPACE=w.worker_env()["VLMQ_CPU_KVCACHE_GIB"],
            # The bench measures throughput, not the per-tenant limits: 0 turns them off.
            VLMQ_TENANT_SUBMITS_PER_SECOND="0",
            VLMQ_TENANT_MAX_ACTIVE_JOBS="0",
        )
        env.update(settings or {})
        moto: tuple[int, int] | None = None
        if store == "s3":
            s3 = cleanup.enter_context(moto_server(log_dir))
            pid = moto_pid(s3)
            moto = (pid, renice_threads(pid, MOTO_NICE))
            env.update(VLMQ_STORE_URL=f"s3://vlmq-bench-{tag}/images", VLMQ_S3_ENDPOINT_URL=s3,
                       VLMQ_S3_ACCESS_KEY_ID="bench", VLMQ_S3_SECRET_ACCESS_KEY="bench")
        else:
            folder = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="vlmq-bench-"))
            env.update(VLMQ_STORE_URL=f"file://{folder}")
        settings = settings_from_env(env)
        upgrade_head(settings)
        api_key = create_api_key(settings.database_url, tenant=TENANT)
        cleanup.callback(purge_queues, settings.queue_prefix)
        st = Stack(env, settings, log_dir, api_key)
        if moto is not None:
            st.moto_pid, st.moto_nice = moto
        try:
            yield st
        finally:
            for service in reversed(st.services):
                service.stop()


# moto answers a GET in about 4 ms on an idle machine, but on two cores shared with vLLM's
# busy-polling engine processes its threads wait for a core: 110 ms per GET at the median
# and over a second at worst during a drain, so the worker's four prepare threads fetch
# fewer images than the engine finishes: a drain measured how the kernel shares the
# cores, 0.24 to 0.61 of raw vLLM from one run to the next, while moto used 0.5 CPU s. A
# real S3 runs elsewhere and its latency does not depend on these cores; at nice -10 moto
# answers in 3-4 ms through the drain. Its CPU still comes off these cores, reported apart.
# BENCH_MOTO_NICE=0 measures the drain with moto as any other process.
MOTO_NICE = int(os.environ.get("BENCH_MOTO_NICE", "-10"))


def renice_threads(pid: int, nice: int) -> int:
    """Sets every thread of `pid` to `nice` (threads they start inherit it); returns the
    niceness in force, unchanged where raising the priority is not permitted."""
    try:
        for tid in psutil.Process(pid).threads():
            os.setpriority(os.PRIO_PROCESS, tid.id, nice)
    except PermissionError:
        print(f"bench: may not set nice {nice} on pid {pid}; it runs at its own priority",
              file=sys.stderr, flush=True)
    return os.getpriority(os.PRIO_PROCESS, pid)


def moto_pid(endpoint: str) -> int:
    """The moto server this process started for `endpoint` (tests.helpers.services)."""
    port = str(urlsplit(endpoint).port)
    for child in psutil.Process().children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if "moto.server" in cmd and port in cmd:
            return child.pid
    raise RuntimeError(f"no moto server of ours listens at {endpoint}")


def purge_queues(prefix: str) -> None:
    """Messages nobody consumed (parked jobs, a drain cut short) would outlive the run."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for pattern in (f"{prefix}*", f"_kombu.binding.{prefix}*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)
    except redis.RedisError as exc:
        print(f"bench: could not purge queues {prefix}*: {exc}", file=sys.stderr)
    finally:
        client.close()
