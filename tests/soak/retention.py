"""`make soak-retention`: 10,000 jobs through an echo worker with retention on (60 s, images
removed as each job ends), until the bucket and the jobs table hold only what retention
allows; it prints the retention sweeper's cost and the worker's ceiling with and without
the sweeper at work.

    .venv/bin/python -m tests.soak.retention [--jobs N] [--retention SECONDS]

Three drains of the same size on one stack (S3 on moto): the first and the last with no
control process (nothing removed), the middle one with the control process sweeping as
its jobs end, once it has removed what the first drain left; the worker's ceiling with the
sweeper at work is the middle drain's rate over the mean of the other two. The sweeper's
own figures come from its log lines (`retention: removed ... in Xs`).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from sqlalchemy import func, select, update

from shared.db import make_engine, make_session_factory
from shared.devtools.tiny_model import build_tiny_model
from shared.models import Job
from shared.storage import make_store
from tests.bench.batches import _start_control
from tests.bench.ceiling import wait_first_claim
from tests.bench.preload import preload, wait_drained
from tests.bench.stack import TENANT, alive, stack
from tests.bench.workload import Workload

_PASS = re.compile(r"retention: removed Swept\(images=(\d+), jobs=(\d+), batches=(\d+), "
                   r"files=(\d+), tombstones=(\d+), orphans=(\d+)\) in ([0-9.]+)s")


def main() -> None:
    parser = argparse.ArgumentParser(prog="soak-retention")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--retention", type=int, default=60)
    args = parser.parse_args()
    w = Workload(model_path=build_tiny_model(Path(".vlmq/models/tiny-qwen2-vl").resolve()))
    log_dir = Path(tempfile.mkdtemp(prefix="vlmq-soak-retention-"))
    print(f"soak-retention: {args.jobs} jobs a drain, retention {args.retention}s; logs in "
          f"{log_dir}", flush=True)
    settings = {"VLMQ_ENGINE": "echo", "VLMQ_RETENTION_SECONDS": str(args.retention),
                "VLMQ_TOMBSTONE_SECONDS": str(args.retention),
                "VLMQ_RETENTION_SWEEP_SECONDS": "1", "VLMQ_KEEP_IMAGES": "false"}
    with stack(w, log_dir, store="s3", settings=settings) as st:
        sessions = make_session_factory(make_engine(st.settings))
        store = make_store(st.settings)

        def drain(name: str, first: int) -> float:
            ids = preload(st.settings, TENANT, args.jobs, lambda i: w.png(first + i),
                          w.prompt, w.params())
            with sessions.begin() as session:  # as VLMQ_KEEP_IMAGES=false makes the API do
                session.execute(update(Job).where(Job.id.in_(ids)).values(keep_image=False))
            worker = st.start_worker("echo", ready=False)
            wait_first_claim(st.settings, worker)
            cpu_before = _cpu(worker.proc.pid)
            drained = wait_drained(st.settings, ids, check=lambda: alive(worker))
            cpu_ms = 1000 * (_cpu(worker.proc.pid) - cpu_before) / drained.jobs
            st.stop(worker)
            # The worker's own CPU a job says whether its path changed; the rate also says
            # how the two cores were shared with moto, Postgres and the control process.
            print(f"soak-retention: {name}: {drained.jobs_per_s:.0f} jobs/s, worker "
                  f"{cpu_ms:.2f} CPU ms a job", flush=True)
            return drained.jobs_per_s

        def census() -> tuple[int, int, int]:
            objects = sum(len(page) for page in store.list_pages("images/", 1000))
            with sessions() as session:
                with_data = session.scalar(select(func.count()).select_from(Job)
                                           .where(Job.purged_at.is_(None))) or 0
                tombstones = session.scalar(select(func.count()).select_from(Job)
                                            .where(Job.purged_at.is_not(None))) or 0
            return objects, with_data, tombstones

        def until(done: Callable[[int, int, int], bool], what: str) -> None:
            started = time.monotonic()
            while True:
                objects, with_data, tombstones = census()
                elapsed = time.monotonic() - started
                print(f"soak-retention: +{elapsed:.0f}s objects {objects}, rows with data "
                      f"{with_data}, tombstones {tombstones}", flush=True)
                if done(objects, with_data, tombstones):
                    return
                if elapsed > 3 * args.retention + 300:
                    sys.exit(f"soak-retention: {what} did not happen in time")
                time.sleep(5)

        before = drain("drain with no sweeper", 0)
        control = _start_control(st)
        cpu = psutil.Process(control.proc.pid)
        cpu_before = cpu.cpu_times()
        until(lambda objects, *_: objects == 0, "removing the first drain's images")
        swept = drain("drain while the sweeper removes", 100_000)
        until(lambda objects, *_: objects == 0, "removing the second drain's images")
        cpu_after = cpu.cpu_times()
        st.stop(control)
        after = drain("drain with no sweeper", 200_000)
        control = _start_control(st)
        until(lambda *counts: not any(counts), "emptying the store and the table")
        control_cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
        # Both control processes log to the one file: it holds every pass.
        report(control.log_text(), (before + after) / 2, swept, control_cpu, 2 * args.jobs)


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def report(log: str, quiet: float, swept: float, control_cpu: float, jobs: int) -> None:
    totals = [0.0] * 7
    for match in _PASS.finditer(log):
        for i, value in enumerate(match.groups()):
            totals[i] += float(value)
    images, rows, _, _, tombstones, _, seconds = totals
    print("\nsoak-retention: the retention sweeper")
    print(f"  images removed         {images:.0f}  ({images / seconds:.0f} objects/s of pass time)")
    print(f"  job rows stripped      {rows:.0f}  ({rows / seconds:.0f} rows/s, their images "
          "already gone)")
    print(f"  tombstone rows deleted {tombstones:.0f}")
    print(f"  time in passes         {seconds:.1f} s")
    print(f"  control process CPU    {control_cpu:.1f} s from its start until the second "
          f"drain's images were gone: {jobs} images and the rows due meanwhile "
          f"({1000 * control_cpu / jobs:.2f} ms an image, every pass and the batch poll "
          "included)")
    print(f"  worker ceiling         {swept:.0f} jobs/s with the sweeper at work, {quiet:.0f} "
          f"without (mean of the drains before and after): {swept / quiet:.2f}")


if __name__ == "__main__":
    main()
