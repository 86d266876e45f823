"""The worker's own ceiling: jobs queued before one echo worker starts, drained with no
model, so only the claim, storage, decode, batcher and result path remain.

With the local-folder store the figure is the project's own code; with moto's S3 the
difference in worker CPU per job is what the S3 client (boto3) costs, apart from the
S3 server's CPU, which the per-process split shows under its own name.

The events arm measures what the task events for Flower cost: the folder-store ceiling with
them on and off (`VLMQ_TASK_EVENTS=false`), alternating over a few rounds of more jobs than
the ceiling's, since a drain lasts seconds and its rate varies more from run to run than
the events cost. Nothing
subscribes to them during the run, which changes nothing for the worker: Redis takes a
PUBLISH the same way whoever listens.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

from sqlalchemy import exists, select

from shared.db import make_engine, make_session_factory
from shared.models import Job
from shared.settings import Settings
from tests.bench import cpu_profile
from tests.bench.preload import preload, wait_drained
from tests.bench.procwatch import CpuSampler
from tests.bench.stack import TENANT, alive, stack
from tests.bench.workload import Workload
from tests.helpers.services import Service


def wait_first_claim(settings: Settings, worker: Service, timeout: float = 300) -> None:
    """Returns soon after the first job leaves the queue, so the CPU split that starts
    here leaves out the worker's start-up (imports, connections)."""
    engine = make_engine(settings)
    deadline = time.monotonic() + timeout
    try:
        with make_session_factory(engine)() as session:
            while not session.scalar(select(exists().where(Job.started_at.is_not(None)))):
                session.rollback()  # a fresh snapshot for the next look
                alive(worker)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no job was claimed in {timeout}s")
                time.sleep(0.01)
    finally:
        engine.dispose()


def measure_ceiling(w: Workload, log_dir: Path, store: str, task_events: bool = True,
                    jobs: int | None = None) -> dict[str, object]:
    with stack(w, log_dir, store=store,
               settings={"VLMQ_TASK_EVENTS": str(task_events).lower()}) as st:
        ids = preload(st.settings, TENANT, jobs or w.echo_jobs, lambda i: w.png(30_000 + i),
                      w.prompt, w.params())
        events = "on" if task_events else "off"
        print(f"bench: echo ceiling ({store} store, task events {events}), {len(ids)} jobs",
              file=sys.stderr, flush=True)
        worker = st.start_worker("echo", ready=False)
        with CpuSampler(worker.proc.pid) as sampler:
            wait_first_claim(st.settings, worker)
            split_before = cpu_profile.snapshot()
            drained = wait_drained(st.settings, ids, timeout=max(300, len(ids) / 5),
                                   check=lambda: alive(worker))
            split = cpu_profile.delta(split_before, cpu_profile.snapshot())
        if drained.succeeded != drained.jobs:
            raise RuntimeError(f"{drained.jobs - drained.succeeded} of {drained.jobs} echo "
                               f"jobs did not succeed; see {worker.log_path}")
        worker_cpu = sampler.between(drained.started, drained.finished)
        return {
            **asdict(drained),
            "worker_cpu_ms_per_job": 1000 * worker_cpu / drained.jobs,
            "cpu_seconds": split,
        }


def measure_event_cost(w: Workload, log_dir: Path) -> dict[str, object]:
    """The echo ceiling with task events on and off, alternating which goes first; medians."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    for r in range(w.event_rounds):
        for on in ((False, True) if r % 2 == 0 else (True, False)):
            arm = measure_ceiling(w, log_dir / f"round{r + 1}-{'on' if on else 'off'}", "file",
                                  task_events=on, jobs=w.event_jobs)
            rates[on].append(float(arm["jobs_per_s"]))  # type: ignore[arg-type]
            cpu[on].append(float(arm["worker_cpu_ms_per_job"]))  # type: ignore[arg-type]
    on_rate, off_rate = statistics.median(rates[True]), statistics.median(rates[False])
    return {
        "rounds": w.event_rounds,
        "on_jobs_per_s": rates[True], "off_jobs_per_s": rates[False],
        "on_over_off": on_rate / off_rate,
        "on_worker_cpu_ms_per_job": statistics.median(cpu[True]),
        "off_worker_cpu_ms_per_job": statistics.median(cpu[False]),
    }
