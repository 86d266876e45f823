"""The jobs this worker holds (claimed and not yet recorded), with the attempt it claimed."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable


class InFlight:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._jobs: dict[uuid.UUID, int] = {}
        self._changed = threading.Condition()

    def __len__(self) -> int:
        return len(self._jobs)

    def room(self) -> int:
        return self.limit - len(self._jobs)

    def add(self, job_id: uuid.UUID, attempt: int) -> None:
        with self._changed:
            self._jobs[job_id] = attempt

    def remove(self, job_ids: Iterable[uuid.UUID]) -> None:
        with self._changed:
            for job_id in job_ids:
                self._jobs.pop(job_id, None)
            self._changed.notify_all()

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def claims(self) -> list[tuple[uuid.UUID, int]]:
        with self._changed:
            return list(self._jobs.items())

    def wait_for_room(self, at_least: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.room() >= at_least, timeout)

    def wait_empty(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: not self._jobs, timeout)
