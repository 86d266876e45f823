"""Keeps this worker's row in the registry fresh so the API knows its model is served."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from sqlalchemy.orm import Session, sessionmaker

from shared import workers_repo
from shared.models import Worker
from shared.settings import Settings

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions
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
        while not self._stop.wait(self.settings.heartbeat_seconds):
            try:
                with self.sessions() as session:
                    if not workers_repo.heartbeat(session, self.worker_id):
                        self._register()
            except Exception:
                # A database hiccup must not kill the worker; the next beat retries.
                log.warning("heartbeat for %s failed", self.worker_id, exc_info=True)
