"""The worker's periodic upkeep, one thread:

- keeps this worker's row in the registry fresh, so the API knows its model is served;
- renews the leases of the jobs it is running, and aborts those cancelled meanwhile;
- requeues its model's jobs whose lease lapsed because the worker running them died
  (any worker of the model may do this; the guarded update lets exactly one win per job);
- re-sends the message of its model's jobs still queued long after their message was sent
  (lost with a broker that restarted without persistence); a duplicate message is harmless,
  since only the first delivery can claim the job.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from shared import workers_repo
from shared.jobs import repo as jobs_repo
from shared.models import Worker
from shared.queue import enqueue_for_model
from worker.context import WorkerContext

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.sessions = ctx.sessions
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._register()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            with self.sessions() as session:
                workers_repo.unregister(session, self.worker_id)
        except Exception:
            log.exception("could not remove worker %s from the registry", self.worker_id)

    def _register(self) -> None:
        s = self.settings
        with self.sessions() as session:
            workers_repo.register(
                session,
                Worker(
                    id=self.worker_id,
                    model=s.model,
                    engine=s.engine.value,
                    queue=s.queue_name,
                    max_batch_size=s.max_batch_size,
                ),
            )

    def _run(self) -> None:
        # Renew well inside the lease so one slow beat does not let it lapse.
        period = min(self.settings.heartbeat_seconds, self.settings.lease_seconds / 3)
        while not self._stop.wait(period):
            for task in (self._beat, self._renew_leases, self._reap_lapsed, self._resend_lost):
                try:
                    task()
                except Exception:
                    # A database hiccup must not kill the worker; the next beat retries.
                    log.warning("%s failed", task.__name__, exc_info=True)

    def _beat(self) -> None:
        with self.sessions() as session:
            if not workers_repo.heartbeat(session, self.worker_id):
                self._register()

    def _renew_leases(self) -> None:
        running = list(self.ctx.running)
        with self.sessions() as session:
            jobs_repo.extend_leases(session, running, self.settings.lease_seconds)
            cancelled = jobs_repo.cancelled_among(session, running)
        # The cancel broadcast is best effort; this catches any job it missed.
        for job_id in cancelled:
            self.ctx.engine.abort(str(job_id))

    def _reap_lapsed(self) -> None:
        s = self.settings
        with self.sessions() as session:
            for job in jobs_repo.lapsed_leases(session, s.model):
                if job.id in self.ctx.running:
                    continue
                message = "the worker running this job stopped renewing its lease"
                if job.attempts >= s.max_attempts:
                    jobs_repo.mark_failed(session, job.id, "worker_lost",
                                          f"{message} (after {job.attempts} attempts)")
                    continue
                if jobs_repo.requeue(session, job.id, "worker_lost", message):
                    enqueue_for_model(self.ctx.celery, s, job.id, job.model, job.priority)
                    log.warning("job %s: lease lapsed; requeued (attempt %d)", job.id,
                                job.attempts)

    def _resend_lost(self) -> None:
        s = self.settings
        with self.sessions() as session:
            unsent = jobs_repo.take_unsent(session, s.model, s.visibility_timeout)
        for job in unsent:
            enqueue_for_model(self.ctx.celery, s, job.id, job.model, job.priority)
            log.warning("job %s: still queued long after its message was sent; sent again",
                        job.id)
