"""Broker wake-ups for accepted jobs, sent from one background thread and coalesced: by the
API for each accepted job, by the control process for each chunk of expanded batch lines.

A wake-up only tells a worker of the model that queued jobs wait in Postgres; the woken
worker claims as many as it has room for, in priority order. So one message can stand for
every job of its model accepted since the last one, and none is lost if a message is:
workers also poll Postgres every `VLMQ_CLAIM_POLL_SECONDS`.

Sending off the request path means a submit never waits on the broker (kombu retries a
send for about a second when Redis is down), and coalescing saves most of Celery's
~1 ms of CPU per message when jobs arrive faster than one per `COALESCE_SECONDS`.
The first job after a quiet spell is sent at once; later ones wait at most that long.
"""

from __future__ import annotations

import logging
import time
import uuid

from celery import Celery

from shared.queue import enqueue_for_model
from shared.sender_thread import SenderThread
from shared.settings import BrokerSettings

log = logging.getLogger(__name__)

COALESCE_SECONDS = 0.05


class WakeupSender(SenderThread):
    def __init__(self, celery: Celery, broker: BrokerSettings) -> None:
        super().__init__("wakeups")
        self._celery = celery
        self._broker = broker
        # model -> (the latest job id, the most urgent priority) since the last send
        self._pending: dict[str, tuple[uuid.UUID, int]] = {}

    def job_accepted(self, job_id: uuid.UUID, model: str, priority: int) -> None:
        with self._cond:
            earlier = self._pending.get(model)
            self._pending[model] = (job_id, min(priority, earlier[1]) if earlier else priority)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, {}
            for model, (job_id, priority) in batch.items():
                self._send(job_id, model, priority)
            # Jobs accepted meanwhile gather into the next message.
            time.sleep(COALESCE_SECONDS)

    def _send(self, job_id: uuid.UUID, model: str, priority: int) -> None:
        try:
            enqueue_for_model(self._celery, self._broker, job_id, model, priority)
        except Exception as exc:
            if not self._failing:  # once per outage, not once per message
                log.warning("the broker did not take a wake-up for model %s (%s: %s); "
                            "workers still find the jobs by polling Postgres",
                            model, exc.__class__.__name__, exc)
            self._failing = True
            return
        if self._failing:
            log.warning("the broker takes wake-ups again")
            self._failing = False
