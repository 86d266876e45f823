"""Light load: one client, one job at a time, timed from the submit to the moment its
`?wait=` long poll hands back the result; three rounds in one run to show the spread.

Beside the client's time, each job's own `finished_at - created_at` (queue and engine, as the
service recorded them): the difference is what the client pays for the service around the
job, the upload before the row exists and the hand-back after it ends.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import httpx

from tests.bench.workload import Workload

WARM_UP = 2


@dataclass(frozen=True)
class Seen:
    client_s: float  # submit sent to result read
    own_s: float  # the job's finished_at - created_at


def one_job(client: httpx.Client, w: Workload, i: int, png: bytes) -> Seen:
    start = time.perf_counter()
    resp = client.post("/v1/jobs", files={"image": (f"{i}.png", png, "image/png")},
                       data={"prompt": w.prompt(i), "max_tokens": str(w.max_tokens),
                             "temperature": "0"})
    resp.raise_for_status()
    job_id = uuid.UUID(resp.json()["id"])
    while True:
        job = client.get(f"/v1/jobs/{job_id}", params={"wait": "30"})
        job.raise_for_status()
        body = job.json()
        if body["finished_at"] is not None:
            if body["status"] != "succeeded":
                raise RuntimeError(f"light-load job ended {body['status']}: {body['error']}")
            seen = time.perf_counter() - start
            own = (datetime.fromisoformat(body["finished_at"])
                   - datetime.fromisoformat(body["created_at"])).total_seconds()
            return Seen(seen, own)


def measure_light(base: str, headers: dict[str, str], w: Workload) -> dict[str, list[float]]:
    """Per round, in seconds: the client's submit-to-result p50 (`p50_s`) and the p50 of
    what the client saw beyond the job's own time (`beyond_own_p50_s`)."""
    rounds: dict[str, list[float]] = {"p50_s": [], "beyond_own_p50_s": []}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        for i in range(WARM_UP):
            one_job(client, w, 60_000 + i, w.png(60_000 + i))
        for r in range(w.light_rounds):
            first = 61_000 + r * w.light_jobs
            pngs = [w.png(first + i) for i in range(w.light_jobs)]
            seen = [one_job(client, w, first + i, png) for i, png in enumerate(pngs)]
            rounds["p50_s"].append(statistics.median(s.client_s for s in seen))
            rounds["beyond_own_p50_s"].append(statistics.median(s.client_s - s.own_s
                                                                for s in seen))
            print(f"bench: light load round {r + 1}: p50 {1000 * rounds['p50_s'][-1]:.0f} ms, "
                  f"beyond the job's own time {1000 * rounds['beyond_own_p50_s'][-1]:.1f} ms",
                  file=sys.stderr, flush=True)
    return rounds
