"""Restarting a worker process whose Celery consumer died instead of being stopped.

kombu's Redis transport can fail while the broker connection drops (an ack racing the
reconnect ends in "Unrecoverable error: AttributeError ... 'hostname'"), after which
Celery's worker returns as if shut down. Left alone, the process would exit and its queue
would go unserved until something restarts it; the process restarts itself instead.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from celery.platforms import EX_FAILURE
from celery.signals import worker_init, worker_shutting_down

log = logging.getLogger(__name__)


class ShutdownWatch:
    """Tells a consumer that died from a shutdown someone asked for (a signal, a remote
    `shutdown` command)."""

    def __init__(self) -> None:
        self.requested = False
        self._worker: object | None = None
        worker_init.connect(self._on_init, weak=False)
        worker_shutting_down.connect(self._on_shutdown, weak=False)

    def _on_init(self, sender: object = None, **_: object) -> None:
        self._worker = sender

    def _on_shutdown(self, **_: object) -> None:
        self.requested = True

    @property
    def died(self) -> bool:
        # Celery's worker ends with EX_FAILURE only after an unrecoverable error.
        return not self.requested and getattr(self._worker, "exitcode", None) == EX_FAILURE


def restart_if_died(watch: ShutdownWatch) -> None:
    """Call after the worker's resources are released; re-executes this process if needed."""
    if not watch.died:
        return
    log.error("the Celery consumer stopped without being asked to (see above); restarting")
    logging.shutdown()
    time.sleep(1)  # a broker that is still down is not hammered by a restart loop
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
