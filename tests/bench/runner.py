"""Runs the arms a run asked for, each on its own: a failing arm is reported and the others
still run, so one broken stage does not cost the whole (long) benchmark."""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

ARMS = ["store", "ingest", "longpoll", "held", "echo_file", "events", "echo_s3", "simulated", "naive", "raw", "drain",
        "light", "drain_s3", "camera", "run_batch", "batch_file", "batch_s3", "system"]


class Runner:
    def __init__(self, selected: list[str] | None = None) -> None:
        if selected is None:
            chosen = os.environ.get("BENCH_ARMS", "")
            selected = [a.strip() for a in chosen.split(",") if a.strip()] or ARMS
        unknown = set(selected) - set(ARMS)
        if unknown:
            raise SystemExit(f"BENCH_ARMS: unknown arms {sorted(unknown)}; known: {ARMS}")
        self.selected = selected
        self.results: dict[str, object] = {}
        self.failed: dict[str, str] = {}
        self.seconds: dict[str, float] = {}

    def wants(self, *arms: str) -> bool:
        return any(arm in self.selected for arm in arms)

    def attempt(self, arm: str, fn: Callable[[], T]) -> T | None:
        if not self.wants(arm):
            return None
        start = time.monotonic()
        try:
            result = fn()
        except Exception as exc:
            traceback.print_exc()
            self.failed[arm] = f"{type(exc).__name__}: {exc}"[:2000]
            print(f"bench: arm {arm} FAILED: {self.failed[arm][:300]}", file=sys.stderr,
                  flush=True)
            return None
        finally:
            self.seconds[arm] = round(time.monotonic() - start, 1)
        self.results[arm] = result
        return result

    def group(self, arms: list[str], fn: Callable[[], None]) -> None:
        """Arms that share a deployment: when setting it up fails, each of them failed."""
        if not self.wants(*arms):
            return
        try:
            fn()
        except Exception as exc:
            traceback.print_exc()
            for arm in arms:
                if self.wants(arm) and arm not in self.results and arm not in self.failed:
                    self.failed[arm] = f"{type(exc).__name__}: {exc}"[:2000]
