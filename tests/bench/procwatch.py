"""CPU time of one process, sampled often enough to cut out any window afterwards.

The drain arms learn their window (first claim, last result) from the job rows only when
the drain is over, so the worker's CPU is recorded all along and read back at those times.
"""

from __future__ import annotations

import bisect
import threading
import time

import psutil


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


class CpuSampler:
    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval
        self._times: list[float] = []
        self._cpu: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                times = self._process.cpu_times()
            except psutil.Error:  # the process ended; what was sampled stands
                return
            self._times.append(time.time())
            self._cpu.append(times.user + times.system)
            if self._stop.wait(self._interval):
                return

    def at(self, moment: float) -> float:
        """CPU seconds used by `moment` (epoch seconds), interpolated between samples."""
        if not self._times:
            raise RuntimeError("no CPU samples were taken")
        i = bisect.bisect_left(self._times, moment)
        if i == 0:
            return self._cpu[0]
        if i == len(self._times):
            return self._cpu[-1]
        t0, t1 = self._times[i - 1], self._times[i]
        c0, c1 = self._cpu[i - 1], self._cpu[i]
        return c0 + (c1 - c0) * (moment - t0) / max(t1 - t0, 1e-9)

    def between(self, start: float, end: float) -> float:
        return self.at(end) - self.at(start)
