"""The GPU worker's periodic upkeep, one thread, plus on Redis a listener for aborts and a
sender of Flower's heartbeats:

- keeps this worker's row in the registry fresh, so the API knows its model is served;
- renews the leases of the jobs it holds (fenced by the attempt it claimed);
- drops from the engine the jobs it holds that stopped running: cancelled by a client, or
  reaped by the sweeper and claimed elsewhere. The abort message on Redis does this at
  once; the beat is the backstop when the message is missed or the broker has no pub/sub;
- on Redis, sends Celery's worker heartbeat event, so Flower lists the worker and its load
  (its jobs' task events, shared/task_events.py, carry the same node name), from a thread
  of its own: a silent broker stalls the heartbeat, never the lease renewals.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

import redis

from shared import workers_repo
from shared.jobs import repo as jobs_repo
from shared.models import Worker
from shared.outages import log_failure
from shared.queue import is_redis
from worker.context import WorkerContext
from worker.inflight import InFlight

log = logging.getLogger(__name__)


class Upkeep:
    def __init__(self, ctx: WorkerContext, inflight: InFlight) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.inflight = inflight
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name="upkeep", daemon=True)]
        if is_redis(self.settings.broker_url):
            # Redis's threads of their own: a silent broker must never hold up the beat,
            # whose lease renewals need Postgres alone.
            self._threads.append(
                threading.Thread(target=self._listen_for_aborts, name="aborts", daemon=True))
            self._threads.append(threading.Thread(target=self._run_heartbeats,
                                                  name="heartbeats", daemon=True))

    @property
    def node_name(self) -> str:
        """This worker as Flower lists it, in its heartbeats and its jobs' task events."""
        return f"vlmq-{self.settings.model}@{self.worker_id}"

    def start(self) -> None:
        self._register()
        self._announce("worker-online")
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._announce("worker-offline")
        try:
            with self.ctx.sessions() as session:
                workers_repo.unregister(session, self.worker_id)
                session.commit()
        except Exception as exc:
            log_failure(log, "could not remove worker %s from the registry", exc, self.worker_id)

    def record_cold_start(self, seconds: float) -> None:
        """This worker's start-up time becomes its model's cold start, which a job queued
        while the model has no worker shows as its estimate."""
        self.ctx.metrics.startup_seconds.set(seconds)
        try:
            with self.ctx.sessions() as session:
                workers_repo.record_cold_start(session, self.settings.model, seconds)
                session.commit()
        except Exception as exc:
            log_failure(log, "could not record the model's cold start", exc)

    def _register(self) -> None:
        s = self.settings
        with self.ctx.sessions() as session:
            workers_repo.register(session, Worker(
                id=self.worker_id, model=s.model, engine=s.engine.value, queue=s.queue_name,
                max_batch_size=s.max_batch_size,
            ))
            session.commit()

    def _run(self) -> None:
        # Renew well inside the lease so one slow beat does not let it lapse.
        period = min(self.settings.heartbeat_seconds, self.settings.lease_seconds / 3)
        while not self._stop.wait(period):
            try:
                self._beat()
            except Exception as exc:
                # A database hiccup must not kill the worker; the next beat retries.
                log_failure(log, "upkeep beat failed", exc)

    def _run_heartbeats(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            self._announce("worker-heartbeat")

    def _announce(self, event: str) -> None:
        if not is_redis(self.settings.broker_url):
            return
        try:
            with self.ctx.celery.connection_for_write() as conn:
                dispatcher = self.ctx.celery.events.Dispatcher(
                    conn, hostname=self.node_name, enabled=True)
                dispatcher.send(event, freq=self.settings.heartbeat_seconds,
                                active=len(self.inflight), processed=0, sw_ident="vlmq-worker",
                                sw_ver="0.1.0", sw_sys=socket.gethostname())
        except Exception:
            log.debug("could not send the %s event", event, exc_info=True)

    def _beat(self) -> None:
        claims = self.inflight.claims()
        with self.ctx.sessions() as session:
            if not workers_repo.heartbeat(session, self.worker_id):
                self._register()
            jobs_repo.renew_leases(session, claims, self.settings.lease_seconds)
            gone = jobs_repo.not_running(session, [job_id for job_id, _ in claims])
            session.commit()
        for job_id in gone:
            self._drop(job_id)

    def _drop(self, job_id: uuid.UUID) -> None:
        if job_id in self.inflight:
            self.ctx.engine.abort(str(job_id))

    def _listen_for_aborts(self) -> None:
        while not self._stop.is_set():
            try:
                client = redis.Redis.from_url(self.settings.broker_url, socket_timeout=None,
                                              health_check_interval=30)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.settings.abort_channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._drop(uuid.UUID(message["data"].decode()))
            except Exception as exc:
                log_failure(log, "abort listener lost Redis; reconnecting in 1s", exc)
                self._stop.wait(1.0)

