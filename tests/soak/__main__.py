"""`make soak`: the long fault run. At least 1,000 jobs, 20 worker SIGKILLs and broker
restarts on a private Redis, then a table: accepted, succeeded, lost, re-executions and
the longest time from a fault until jobs were finishing again.

    .venv/bin/python -m tests.soak [--jobs N] [--kills N] [--redis-restarts N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select

from shared.db import make_engine, make_session_factory
from shared.devtools.tiny_model import build_tiny_model
from shared.models import Job
from tests.helpers.services import (
    RedisServer,
    Service,
    fresh_database,
    moto_server,
    start_api,
    start_worker,
)
from tests.helpers.stack import make_stack, submit_many


def main() -> None:
    parser = argparse.ArgumentParser(prog="soak")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--redis-restarts", type=int, default=2)
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="vlmq-soak-"))
    model = build_tiny_model(Path(".vlmq/models/tiny-qwen2-vl").resolve())
    broker = RedisServer(log_dir)
    broker.start()
    with moto_server(log_dir) as s3, fresh_database() as db_url:
        stack = make_stack(db_url, s3, model, log_dir).with_env(
            broker_url=broker.url, max_batch_size="16", lease_seconds="3", heartbeat_seconds="1",
            visibility_timeout_seconds="8", max_attempts="50", retry_backoff_seconds="0.2",
        ).migrate()
        sessions = make_session_factory(make_engine(stack.settings))
        api, base = start_api(stack.env, log_dir)

        ids = submit_many(base, 0, args.jobs, stack.api_key)
        print(f"soak: {len(ids)} jobs accepted; logs in {log_dir}", flush=True)

        def finished() -> int:
            with sessions() as session:
                return session.scalar(select(func.count()).where(
                    Job.id.in_(ids), Job.status.in_(["succeeded", "failed"]))) or 0

        def wait_progress(since: int, timeout: float = 300) -> float:
            start = time.monotonic()
            while finished() <= since:
                if time.monotonic() - start > timeout:
                    raise TimeoutError(f"no progress for {timeout}s after a fault")
                time.sleep(0.05)
            return time.monotonic() - start

        faults = ["kill"] * args.kills
        for r in range(args.redis_restarts, 0, -1):  # spread the broker restarts among the kills
            faults.insert(r * len(faults) // (args.redis_restarts + 1), "redis")
        worker: Service = start_worker(stack.env, log_dir, "soak-worker-0")
        recovery: list[float] = []
        try:
            for n, fault in enumerate(faults, 1):
                target = args.jobs * n // (len(faults) + 1)
                while finished() < target:
                    time.sleep(0.05)
                done = finished()
                if fault == "kill":
                    worker.kill()
                    worker = start_worker(stack.env, log_dir, f"soak-worker-{n}")
                else:
                    broker.kill()
                    time.sleep(1)
                    broker.start()
                # With every job already done there is no progress left to wait for.
                stalled = finished() == done < len(ids)
                recovery.append(wait_progress(done) if stalled else 0.0)
                print(f"soak: fault {n}/{len(faults)} ({fault}) at {done} done; "
                      f"jobs finishing again after {recovery[-1]:.1f}s", flush=True)
            while finished() < len(ids):
                wait_progress(finished())
        finally:
            worker.stop()
            api.stop()
            broker.kill()

        with sessions() as session:
            rows = session.scalars(select(Job).where(Job.id.in_(ids))).all()
        succeeded = sum(r.status == "succeeded" for r in rows)
        lost = sum(r.status not in ("succeeded", "failed") for r in rows) + len(ids) - len(rows)
        print()
        print(f"{'jobs accepted':34s} {len(ids):8d}")
        print(f"{'succeeded':34s} {succeeded:8d}")
        print(f"{'failed':34s} {len(ids) - succeeded - lost:8d}")
        print(f"{'lost':34s} {lost:8d}")
        print(f"{'worker SIGKILLs / Redis restarts':34s} {args.kills:4d} / {args.redis_restarts}")
        print(f"{'jobs executed more than once':34s} {sum(r.attempts > 1 for r in rows):8d}")
        print(f"{'extra executions':34s} {sum(r.attempts - 1 for r in rows):8d}")
        print(f"{'max time to recover (s)':34s} {max(recovery, default=0):8.1f}")
        if lost:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
