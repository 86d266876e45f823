"""How fast one API process takes uploads, and its CPU per upload; no worker runs.

Clients reuse their connections (one httpx.Client per thread) as a real uploader would,
and the PNGs are encoded before the clock starts, so the figure is the API's own.
"""

from __future__ import annotations

import sys
import time

import httpx

from tests.bench import cpu_profile
from tests.bench.clients import fan_out, submit_upload
from tests.bench.procwatch import cpu_seconds
from tests.bench.stack import PARKED_MODEL
from tests.bench.workload import Workload

WARM_UP = 16


def upload(client: httpx.Client, w: Workload, i: int, png: bytes) -> float:
    """One multipart submit of a parked job; returns its round trip in seconds."""
    start = time.perf_counter()
    submit_upload(client, w, PARKED_MODEL, i, png)
    return time.perf_counter() - start


def measure_ingest(base: str, headers: dict[str, str], api_pid: int,
                   w: Workload) -> dict[str, object]:
    print(f"bench: ingest, {w.uploads} uploads from {w.upload_threads} clients",
          file=sys.stderr, flush=True)
    pngs = [w.png(50_000 + i) for i in range(w.uploads + WARM_UP)]
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        for i in range(WARM_UP):
            upload(client, w, i, pngs[i])
    split_before, cpu_before = cpu_profile.snapshot(), cpu_seconds(api_pid)
    start = time.perf_counter()
    fan_out(base, headers, w.upload_threads, range(WARM_UP, len(pngs)),
            lambda client, i: upload(client, w, i, pngs[i]))
    seconds = time.perf_counter() - start
    api_cpu = cpu_seconds(api_pid) - cpu_before
    split = cpu_profile.delta(split_before, cpu_profile.snapshot())
    return {
        "uploads": w.uploads,
        "seconds": seconds,
        "uploads_per_s": w.uploads / seconds,
        "api_cpu_ms_per_upload": 1000 * api_cpu / w.uploads,
        "cpu_seconds": split,
    }
