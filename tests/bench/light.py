"""Light load: one client, one job at a time, timed from the submit to the moment its
`?wait=` long poll hands back the result; three rounds in one run to show the spread."""

from __future__ import annotations

import statistics
import sys
import time
import uuid

import httpx

from tests.bench.workload import Workload

WARM_UP = 2


def one_job(client: httpx.Client, w: Workload, i: int, png: bytes) -> float:
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
            return time.perf_counter() - start


def measure_light(base: str, headers: dict[str, str], w: Workload) -> list[float]:
    """Submit-to-result p50 in seconds, one figure per round."""
    rounds = []
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        for i in range(WARM_UP):
            one_job(client, w, 60_000 + i, w.png(60_000 + i))
        for r in range(w.light_rounds):
            first = 61_000 + r * w.light_jobs
            pngs = [w.png(first + i) for i in range(w.light_jobs)]
            rounds.append(statistics.median(
                one_job(client, w, first + i, png) for i, png in enumerate(pngs)))
            print(f"bench: light load round {r + 1}: p50 {1000 * rounds[-1]:.0f} ms",
                  file=sys.stderr, flush=True)
    return rounds
