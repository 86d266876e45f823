"""Celery task events for vlmq's jobs, so Flower's task list shows every job.

Jobs are rows in Postgres that workers claim in bulk, not Celery tasks, so nothing in Celery
reports them. Each process that moves a job's status (the worker, the control process, the
API for a cancel) runs one `TaskEventSender`: the status writes note their events on the
session (shared/jobs/events.py), and once the transaction commits they come here. One
thread publishes them as Celery's batched form (a list of events on the `task.multi`
routing key, which Celery's receiver and so Flower unpack), so thousands of jobs a second
cost a few publishes, not one per event.

Events are a view for operators: the job's state of record is its row. When the broker is
down they are dropped (logged once per outage), and at most `_MAX_PENDING` wait, so a long
outage cannot grow the process's memory.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from celery import Celery
from celery.events.event import get_exchange
from celery.utils.time import utcoffset
from kombu import Producer

from shared.sender_thread import SenderThread

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.1
EVENTS_PER_MESSAGE = 500
_MAX_PENDING = 100_000

# (type, e.g. "task-succeeded"; the job's id; when it happened, Unix seconds; fields)
TaskEvent = tuple[str, str, float, dict[str, Any]]


class TaskEventSender(SenderThread):
    def __init__(self, celery: Celery, hostname: str) -> None:
        super().__init__("task-events")
        self._celery = celery
        self.hostname = hostname
        self._pending: collections.deque[TaskEvent] = collections.deque(maxlen=_MAX_PENDING)

    def emit(self, events: Iterable[TaskEvent]) -> None:
        with self._cond:
            self._pending.extend(events)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            try:
                self._publish_until_stopped()
                return
            except Exception as exc:  # the broker went away: drop what failed, reconnect
                if not self._failing:
                    log.warning("task events for Flower are not reaching the broker (%s: %s); "
                                "jobs run on, Flower misses them meanwhile",
                                exc.__class__.__name__, exc)
                self._failing = True
                with self._cond:
                    if self._stopping:
                        return
                    self._cond.wait(1.0)

    def _publish_until_stopped(self) -> None:
        with self._celery.connection_for_write() as conn:
            exchange = get_exchange(conn, name=self._celery.conf.event_exchange)
            producer = Producer(conn, exchange=exchange, serializer="json", auto_declare=False)
            while True:
                with self._cond:
                    while not self._pending and not self._stopping:
                        self._cond.wait()
                    if not self._pending:
                        return
                    taken = [self._pending.popleft()
                             for _ in range(min(EVENTS_PER_MESSAGE, len(self._pending)))]
                producer.publish(self._bodies(taken), routing_key="task.multi",
                                 exchange=exchange.name, declare=[exchange],
                                 headers={"hostname": self.hostname}, delivery_mode=1)
                if self._failing:
                    log.warning("task events reach the broker again")
                    self._failing = False
                if len(self._pending) < EVENTS_PER_MESSAGE and not self._stopping:
                    # Events noted meanwhile gather into the next message.
                    time.sleep(FLUSH_SECONDS)

    def _bodies(self, taken: list[TaskEvent]) -> list[dict[str, Any]]:
        # The fields Celery's own dispatcher adds (celery.events.dispatcher), which Flower's
        # state needs to place each event: node, clock, pid and the sender's UTC offset.
        # One logical clock tick per message: its events are ordered by their timestamps.
        sender = {"hostname": self.hostname, "utcoffset": utcoffset(), "pid": os.getpid(),
                  "clock": self._celery.clock.forward()}
        return [dict(fields, type=kind, uuid=job_id, timestamp=at, **sender)
                for kind, job_id, at, fields in taken]
