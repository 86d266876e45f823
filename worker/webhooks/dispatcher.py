"""Turns due deliveries in Postgres into messages on the webhook queue.

Polling the ledger, rather than trusting one message per event, is what makes delivery
survive a killed sender (its lease lapses and the delivery is due again), a lost message
(it is sent again after REDISPATCH_AFTER_SECONDS) and retries hours apart (the broker
never holds a message for a delayed attempt).
"""

from __future__ import annotations

import logging
import threading

from shared.outages import log_failure
from shared.queue import enqueue_delivery
from shared.webhooks import repo as deliveries_repo
from worker.webhooks.delivery import WebhookContext

log = logging.getLogger(__name__)

REDISPATCH_AFTER_SECONDS = 60.0


class Dispatcher:
    def __init__(self, ctx: WebhookContext) -> None:
        self._ctx = ctx
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook-dispatcher", daemon=True)

    def start(self) -> None:
        try:
            with self._ctx.sessions() as session:
                released = deliveries_repo.forget_dispatches(session)
                session.commit()
            if released:
                log.info("%d due deliveries will be dispatched again", released)
        except Exception as exc:  # without it they are dispatched again after the usual period
            log_failure(log, "could not release earlier dispatches", exc)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._ctx.settings.webhook_poll_seconds):
            try:
                self.tick()
            except Exception as exc:  # the database or broker is down; the next tick tries again
                log_failure(log, "webhook dispatch failed; retrying", exc)

    def tick(self) -> int:
        with self._ctx.sessions() as session:
            due = deliveries_repo.take_due(session, REDISPATCH_AFTER_SECONDS)
            # Committed before the messages go out: until then this transaction holds the
            # rows, and a sender's claim would wait on it.
            session.commit()
        for delivery_id in due:
            enqueue_delivery(self._ctx.celery, self._ctx.settings, delivery_id)
            self._ctx.metrics.dispatched.inc()
        return len(due)
