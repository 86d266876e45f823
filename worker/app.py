"""The GPU worker process: resident engine, intake, recorder, upkeep and the sweeper.

The engine loads and is warmed up before anything is claimed, and is released in a
`finally`. SIGTERM or
SIGINT stops claiming, lets the jobs held finish for `VLMQ_SHUTDOWN_GRACE_SECONDS`, then
aborts the rest and hands them back to the queue without counting the attempt.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import psutil

from shared.jobs import events as task_events
from shared.jobs.lifecycle import RetryPolicy
from shared.jobs.sweeper import Sweeper
from shared.settings import Settings
from worker.context import WorkerContext
from worker.doorbell import make_doorbell
from worker.inflight import InFlight
from worker.intake import Intake
from worker.recorder import Recorder
from worker.upkeep import Upkeep
from worker.warmup import warm_up

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ctx = WorkerContext.start(settings)
    warm_up(ctx.engine, settings)
    policy = RetryPolicy.from_settings(settings)
    inflight = InFlight(settings.in_flight_limit)
    recorder = Recorder(ctx.sessions, policy, inflight, ctx.metrics)
    doorbell = make_doorbell(settings, ctx.celery)
    intake = Intake(ctx, doorbell, inflight, recorder)
    upkeep = Upkeep(ctx, inflight)
    sweeper = Sweeper(ctx.db, ctx.sessions, policy, settings.sweep_seconds)
    events = task_events.start_sending(ctx.celery, upkeep.node_name, settings.task_events)
    try:
        recorder.start()
        upkeep.start()
        sweeper.start()
        intake.start()
        cold_start = time.time() - psutil.Process().create_time()
        upkeep.record_cold_start(cold_start)
        log.info("worker %s for model %s (%s engine, queue %s), %.1f s after its start: ready.",
                 upkeep.worker_id, settings.model, settings.engine.value, settings.queue_name,
                 cold_start)
        stop.wait()
        log.info("stopping: no new claims; finishing %d jobs held", len(inflight))
        intake.stop()
        if not inflight.wait_empty(settings.shutdown_grace_seconds):
            log.warning("handing %d unfinished jobs back to the queue", len(inflight))
            for job_id, _ in inflight.claims():
                ctx.engine.abort(str(job_id))
            inflight.wait_empty(10)
        recorder.stop()
    finally:
        sweeper.stop()
        task_events.stop_sending(events)
        upkeep.stop()
        doorbell.close()
        ctx.close()
    log.info("worker stopped")
