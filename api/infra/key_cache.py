"""Verified API keys, remembered for at most a second.

A busy client then costs one key lookup a second per API process rather than one per
request, and a revoked key stops working within that second.
"""

from __future__ import annotations

import time

from shared.tenancy.repo import Authenticated

CACHE_SECONDS = 1.0
_CACHE_MAX_ENTRIES = 10_000


class KeyCache:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[Authenticated, float]] = {}

    def get(self, presented: str) -> Authenticated | None:
        entry = self._entries.get(presented)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, presented: str, auth: Authenticated) -> None:
        if len(self._entries) >= _CACHE_MAX_ENTRIES:
            self._entries.clear()
        self._entries[presented] = (auth, time.monotonic() + CACHE_SECONDS)
