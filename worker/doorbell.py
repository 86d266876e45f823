"""Wake-ups for a GPU worker: the Celery messages the API sends, taken many at a time.

A message says "a job of this model is waiting"; which jobs run is decided by the claim in
Postgres (priority order), so a lost, duplicate or stale message costs nothing but a
wake-up. On Redis one BLMPOP takes up to `count` messages from the model's priority lists
in a single round trip (Celery's own consumer costs about a millisecond of CPU per message,
half this worker's whole budget per job). Other brokers (the embedded filesystem broker)
go through kombu.
"""

from __future__ import annotations

import logging
from typing import Protocol

import redis
from celery import Celery

from shared.queue import PRIORITY_STEPS, is_redis
from shared.settings import Settings

log = logging.getLogger(__name__)

# kombu's Redis transport keeps priority p of queue q in the list "q\x06\x16p" (p > 0).
_KOMBU_PRIORITY_SEP = "\x06\x16"


class Doorbell(Protocol):
    def wait(self, count: int, timeout: float) -> int:
        """Takes up to `count` messages, blocking up to `timeout` s for the first; how many."""
        ...

    def close(self) -> None: ...


def priority_lists(queue: str) -> list[str]:
    return [queue if p == 0 else f"{queue}{_KOMBU_PRIORITY_SEP}{p}" for p in PRIORITY_STEPS]


class RedisDoorbell:
    def __init__(self, broker_url: str, queue: str, max_wait: float = 1.0) -> None:
        # A BLMPOP answers within its own timeout (at most `max_wait`), so a reply later
        # than that plus a margin means a broker that is gone or cut off, not a slow one:
        # the socket gives up then, and the worker claims without wake-ups meanwhile.
        self.client = redis.Redis.from_url(broker_url, socket_timeout=max_wait + 2,
                                           socket_connect_timeout=2, health_check_interval=30)
        self.keys = priority_lists(queue)

    def wait(self, count: int, timeout: float) -> int:
        if timeout > 0:
            popped = self.client.blmpop(timeout, len(self.keys), *self.keys, direction="RIGHT",
                                        count=count)
        else:
            popped = self.client.lmpop(len(self.keys), *self.keys, direction="RIGHT", count=count)
        return len(popped[1]) if popped else 0

    def close(self) -> None:
        self.client.close()


class KombuDoorbell:
    """Any kombu broker; messages are taken without acknowledgement, as wake-ups."""

    def __init__(self, celery: Celery, queue: str) -> None:
        self.connection = celery.connection_for_read()
        self.queue = self.connection.SimpleQueue(queue, no_ack=True)

    def wait(self, count: int, timeout: float) -> int:
        taken = 0
        try:
            self.queue.get(block=timeout > 0, timeout=timeout or None)
            taken = 1
            while taken < count:
                self.queue.get_nowait()
                taken += 1
        except self.queue.Empty:
            pass
        return taken

    def close(self) -> None:
        self.queue.close()
        self.connection.release()


def make_doorbell(settings: Settings, celery: Celery) -> Doorbell:
    if is_redis(settings.broker_url):
        return RedisDoorbell(settings.broker_url, settings.queue_name,
                             max_wait=settings.claim_poll_seconds)
    return KombuDoorbell(celery, settings.queue_name)
