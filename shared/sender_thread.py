"""The thread shape of vlmq's background senders (shared/wakeups.py, shared/task_events.py):
callers hand work over under a condition and return at once; one daemon thread sends it,
and a stop sends what is still pending before the thread ends."""

from __future__ import annotations

import threading

_STOP_TIMEOUT_SECONDS = 5.0


class SenderThread:
    def __init__(self, name: str) -> None:
        self._cond = threading.Condition()
        self._stopping = False
        self._failing = False  # whether the last send failed: one warning per outage
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Sends what is pending, then ends the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=_STOP_TIMEOUT_SECONDS)

    def _run(self) -> None:
        raise NotImplementedError
