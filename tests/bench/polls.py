"""Long polls: how soon a held `?wait=` sees a job turn terminal, and what many held polls
cost everyone else (the submit round trip while hundreds of clients wait).

Both use parked jobs (a model no worker serves), so a poll is surely held before its job
can finish: the long-poll arm hands a wave of them to the echo worker only once their
polls are out, and the held-poll arm never lets them run.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Coroutine
from concurrent.futures import Future
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import psutil
from sqlalchemy import update

from shared.db import make_engine, make_session_factory
from shared.models import Job
from shared.settings import Settings
from tests.bench.ingest import upload
from tests.bench.preload import announce
from tests.bench.procwatch import cpu_seconds
from tests.bench.workload import Workload

# Time for a wave of GETs to reach the API and be parked on their jobs.
HOLD_SETTLE_S = 0.3
WAIT = {"wait": "30"}
T = TypeVar("T")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))]


def release(settings: Settings, ids: list[uuid.UUID]) -> None:
    """Hands parked jobs to the worker's model and rings its doorbell."""
    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            session.execute(update(Job).where(Job.id.in_(ids)).values(model=settings.model))
            session.commit()
    finally:
        engine.dispose()
    announce(settings, ids)


async def _poll_until_terminal(client: httpx.AsyncClient, job_id: uuid.UUID) -> float:
    """Seconds from the job's finished_at to this client holding the answer."""
    while True:
        resp = await client.get(f"/v1/jobs/{job_id}", params=WAIT)
        received = time.time()
        resp.raise_for_status()
        job = resp.json()
        if job["finished_at"] is not None:
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
            return received - datetime.fromisoformat(job["finished_at"]).timestamp()


async def _long_poll_waves(base: str, headers: dict[str, str], settings: Settings,
                           ids: list[uuid.UUID], wave: int) -> list[float]:
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60,
                                 limits=httpx.Limits(max_connections=wave)) as client:
        for start in range(0, len(ids), wave):
            batch = ids[start:start + wave]
            polls = [asyncio.create_task(_poll_until_terminal(client, j)) for j in batch]
            await asyncio.sleep(HOLD_SETTLE_S)
            if any(p.done() for p in polls):  # surfaces an error before the jobs run
                await asyncio.gather(*polls)
                raise RuntimeError("a poll on a parked job returned before its job ran")
            await asyncio.to_thread(release, settings, batch)
            latencies.extend(await asyncio.gather(*polls))
    return latencies


def measure_long_poll(base: str, headers: dict[str, str], settings: Settings,
                      ids: list[uuid.UUID], w: Workload) -> dict[str, float]:
    print(f"bench: long poll, {len(ids)} jobs in waves of {w.poll_wave}",
          file=sys.stderr, flush=True)
    latencies = asyncio.run(_long_poll_waves(base, headers, settings, ids, w.poll_wave))
    return {
        "jobs": len(latencies),
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * percentile(latencies, 0.95),
        "max_ms": 1000 * max(latencies),
    }


class Holders:
    """n clients, each holding `?wait=30` on a parked job and asking again when it lapses,
    on one event loop in a thread of their own."""

    def __init__(self, base: str, headers: dict[str, str], ids: list[uuid.UUID]) -> None:
        self.base = base
        self.headers = headers
        self.ids = ids
        self.errors: list[Exception] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        self._client = self._call(self._make_client(limits))
        self._tasks: list[Future[None]] = []

    async def _make_client(self, limits: httpx.Limits) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, headers=self.headers, limits=limits,
                                 timeout=httpx.Timeout(60, pool=None))

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _hold(self, job_id: uuid.UUID) -> None:
        try:
            while True:
                (await self._client.get(f"/v1/jobs/{job_id}", params=WAIT)).raise_for_status()
        except Exception as exc:  # reported by the arm; one failed holder is no hold
            self.errors.append(exc)

    def grow(self, n: int, timeout: float = 60) -> None:
        """Returns once n connections are open and have had time to be parked on."""
        if len(self.ids) < n:
            raise ValueError(f"{n} holders need {n} parked jobs, got {len(self.ids)}")
        for job_id in self.ids[len(self._tasks):n]:
            self._tasks.append(asyncio.run_coroutine_threadsafe(self._hold(job_id), self._loop))
        deadline = time.monotonic() + timeout
        while (open_ := self.connections()) < n:
            if self.errors:
                raise RuntimeError(f"{len(self.errors)} held polls failed: {self.errors[0]!r}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {open_} of {n} held polls connected in {timeout}s")
            time.sleep(0.1)
        time.sleep(0.5)  # the last requests' first read of their job

    def connections(self) -> int:
        port = urlsplit(self.base).port
        return sum(1 for c in psutil.Process().net_connections(kind="tcp")
                   if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._call(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()


def submit_p50(base: str, headers: dict[str, str], w: Workload, n: int, first: int) -> float:
    pngs = [w.png(first + i) for i in range(n)]
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        upload(client, w, first, pngs[0])  # a fresh connection, not timed
        return statistics.median(upload(client, w, first + i, pngs[i]) for i in range(1, n))


def _settle(api_pid: int, timeout: float = 20) -> None:
    """Waits until the API has handled the new polls' first requests: a connection is open
    before its request is read, and 700 of them at once take the API a second or more of
    CPU, which a measurement started meanwhile would count as the cost of holding them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(api_pid)
        time.sleep(0.5)
        if cpu_seconds(api_pid) - before < 0.05 * 0.5:  # under 5% of a core
            return


def measure_held(base: str, headers: dict[str, str], api_pid: int, ids: list[uuid.UUID],
                 w: Workload) -> dict[str, float]:
    """Submit p50 alone and with each count of held polls; and the API's CPU while
    it only holds them (what the held polls cost when nothing else happens)."""
    print(f"bench: submit p50 alone and with {w.held_polls} held polls",
          file=sys.stderr, flush=True)
    out = {"submit_p50_ms_alone": 1000 * submit_p50(base, headers, w, w.submits, 70_000)}
    holders = Holders(base, headers, ids)
    try:
        for n in w.held_polls:
            holders.grow(n)
            _settle(api_pid)
            before, start = cpu_seconds(api_pid), time.perf_counter()
            time.sleep(2)
            out[f"api_cpu_pct_{n}_held"] = 100 * (cpu_seconds(api_pid) - before) / (
                time.perf_counter() - start)
            out[f"submit_p50_ms_{n}_held"] = 1000 * submit_p50(base, headers, w, w.submits,
                                                               70_000 + 1000 * n)
            if holders.errors:
                raise RuntimeError(f"{len(holders.errors)} held polls failed: "
                                   f"{holders.errors[0]!r}")
            print(f"bench:   {n} held: submit p50 {out[f'submit_p50_ms_{n}_held']:.1f} ms",
                  file=sys.stderr, flush=True)
    finally:
        holders.close()
    return out
