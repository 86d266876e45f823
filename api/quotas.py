"""Per-tenant submission rate and active-jobs quota, checked before a submission is read.

The rate is a sliding one-second window (the `limits` library) kept in Redis, so every API
process shares it; with the filesystem broker of the embedded setup it is per process.
When Redis is unreachable the rate is not enforced: jobs are accepted into Postgres either
way, and refusing every submission during a broker outage would turn a limit into an outage.

The quota counts the tenant's queued and running jobs. That count is remembered for up to
a second and advanced by this process's own acceptances, so a busy tenant costs one count
a second; before refusing, it is counted afresh, so a refusal is never based on an old
count. Other API processes' acceptances within that second may overshoot it a little.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import Storage, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter
from redis.exceptions import RedisError
from sqlalchemy.orm import Session, sessionmaker

from shared.errors import RateLimited
from shared.jobs import repo as jobs_repo
from shared.queue import is_redis
from shared.settings import Settings
from shared.tenancy.repo import Authenticated

log = logging.getLogger(__name__)

_COUNT_FRESH_SECONDS = 1.0
_QUOTA_RETRY_AFTER = 2
_REDIS_TIMEOUT = 0.25
_WARN_EVERY_SECONDS = 30.0


@dataclass
class _Count:
    value: int
    counted_at: float


class SubmitLimits:
    def __init__(self, settings: Settings, reads: sessionmaker[Session]) -> None:
        self._settings = settings
        self._reads = reads
        self._namespace = settings.queue_prefix
        self._limiter = SlidingWindowCounterRateLimiter(_storage(settings))
        self._counts: dict[str, _Count] = {}
        self._lock = threading.Lock()
        self._warned_at = 0.0

    def apply_to(self, auth: Authenticated) -> bool:
        """Whether any limit applies; without one a submission skips the check entirely."""
        settings = self._settings
        return bool(auth.submits_per_second or settings.tenant_submits_per_second
                    or auth.max_active_jobs or settings.tenant_max_active_jobs)

    def admit(self, auth: Authenticated) -> None:
        """Raises RateLimited (429, with headers) when the tenant is over either limit."""
        tenant = auth.principal.tenant_id
        self._check_rate(tenant, auth.submits_per_second)
        self._check_quota(tenant, auth.max_active_jobs)

    def accepted(self, tenant: str) -> None:
        with self._lock:
            count = self._counts.get(tenant)
            if count is not None:
                count.value += 1

    def _check_rate(self, tenant: str, own_rate: float | None) -> None:
        rate = own_rate or self._settings.tenant_submits_per_second
        if not rate:
            return
        item = _per_window(rate)
        try:
            if self._limiter.hit(item, self._namespace, tenant):
                return
            stats = self._limiter.get_window_stats(item, self._namespace, tenant)
        except RedisError as exc:
            self._warn(f"submission rate not enforced: Redis is unreachable ({exc})")
            return
        reset = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimited(
            f"tenant {tenant!r} is over its {rate:g} submissions per second; retry after "
            f"{reset} s, or ask an operator to raise it (`vlmq keys limits`)",
            code="rate_limited",
            headers={
                "Retry-After": str(reset),
                "RateLimit-Limit": str(item.amount),
                "RateLimit-Remaining": str(stats.remaining),
                "RateLimit-Reset": str(reset),
            },
        )

    def _check_quota(self, tenant: str, own_limit: int | None) -> None:
        limit = own_limit or self._settings.tenant_max_active_jobs
        if not limit:
            return
        if self._active(tenant, fresh=False) < limit or self._active(tenant, fresh=True) < limit:
            return
        raise RateLimited(
            f"tenant {tenant!r} has {limit} jobs queued or running, its limit; submit more as "
            "they finish, or ask an operator to raise it (`vlmq keys limits`)",
            code="quota_exceeded",
            headers={
                "Retry-After": str(_QUOTA_RETRY_AFTER),
                "RateLimit-Limit": str(limit),
                "RateLimit-Remaining": "0",
                "RateLimit-Reset": str(_QUOTA_RETRY_AFTER),
            },
        )

    def _active(self, tenant: str, *, fresh: bool) -> int:
        now = time.monotonic()
        with self._lock:
            count = self._counts.get(tenant)
            if count is not None and not fresh and now - count.counted_at < _COUNT_FRESH_SECONDS:
                return count.value
        with self._reads() as session:
            value = jobs_repo.count_active(session, tenant)
        with self._lock:
            self._counts[tenant] = _Count(value, now)
        return value

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_SECONDS:
            self._warned_at = now
            log.warning(message)


def _per_window(rate: float) -> RateLimitItem:
    """A rate as a count per whole-second window: 0.5/s is 1 per 2 s."""
    if rate >= 1:
        return RateLimitItemPerSecond(round(rate))
    return RateLimitItemPerSecond(1, max(1, round(1 / rate)))


def _storage(settings: Settings) -> Storage:
    if is_redis(settings.broker_url):
        return storage_from_string(settings.broker_url, socket_timeout=_REDIS_TIMEOUT,
                                   socket_connect_timeout=_REDIS_TIMEOUT)
    return storage_from_string("memory://")
