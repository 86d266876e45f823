"""Per-tenant submission rate and active-jobs quota, checked before a submission is read.

The rate is a sliding one-second window (the `limits` library) kept in Redis, so every API
process shares it; with the filesystem broker of the embedded setup it is per process.
When Redis is unreachable the rate is not enforced: jobs are accepted into Postgres either
way, and refusing every submission during a broker outage would turn a limit into an outage.

The quota counts the tenant's queued and running jobs. That count is remembered for up to
a second and advanced by this process's own acceptances, so a busy tenant costs one count
a second; before refusing, it is counted afresh, so a refusal is never based on an old
count. The check before the body is read refuses early; the one that holds is at the
insert (`reserve`): far below the limit the job is inserted on its own (one round trip),
and near it the insert takes a per-tenant Postgres advisory lock, counts, and inserts in
one transaction, so concurrent submits through any number of API processes never take
more than the limit. "Far below" leaves room for the tenant's whole rate for a couple of
seconds (other processes' acceptances since the count was taken), and for this process's
inserts in flight; with no rate limit, every insert under a quota is counted.

A tenant's own limit of 0 lifts it for that tenant, and one left unset takes the server's
default (`shared.tenancy.limits.effective_limit`, the only reading of them).

Batches have their own caps (lines queued or running, batches not ended), checked at
POST /v1/batches; files and batches count against the same submission rate as jobs.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import Storage, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter
from redis.exceptions import RedisError
from sqlalchemy.orm import Session, sessionmaker

from shared.errors import RateLimited
from shared.jobs import repo as jobs_repo
from shared.queue import is_redis
from shared.settings import BrokerSettings, LimitsSettings, Settings
from shared.tenancy import usage
from shared.tenancy.limits import effective_limit
from shared.tenancy.repo import Authenticated, TenantRules, tenant_rules

log = logging.getLogger(__name__)

_COUNT_FRESH_SECONDS = 1.0
_RULES_FRESH_SECONDS = 1.0  # as long as a verified key is remembered (api/infra/key_cache.py)
_QUOTA_RETRY_AFTER = 2
# Batch lines drain at the pace of the GPUs, not in seconds.
_BATCH_RETRY_AFTER = 30
# Seconds of the tenant's rate left as room below the quota before inserts are counted
# under the lock: the count may be a second old, and other processes' requests admitted
# before it may still be inserting.
_HEADROOM_SECONDS = 2.0
_REDIS_TIMEOUT = 0.25
_WARN_EVERY_SECONDS = 30.0


@dataclass
class _Count:
    value: int
    counted_at: float


@dataclass
class Reservation:
    """How one job's insert must go: on its own (`limit` None), or counted under the
    tenant's lock and refused at `limit`; the exact insert reports what it `counted`."""

    limit: int | None
    counted: int | None = None


class SubmitLimits:
    def __init__(self, settings: Settings, reads: sessionmaker[Session]) -> None:
        # The broker only names and holds the rate windows; after this, limits alone are read.
        self._limits: LimitsSettings = settings
        self._reads = reads
        self._namespace = settings.queue_prefix
        self._limiter = SlidingWindowCounterRateLimiter(_storage(settings))
        self._counts: dict[str, _Count] = {}
        self._rules: dict[str, tuple[TenantRules, float]] = {}
        # Fast-path inserts of this process under way, per tenant: not yet in any count.
        self._pending: dict[str, int] = {}
        # One exact insert per tenant at a time in this process: the others wait here, not
        # holding a database connection while they wait for the advisory lock.
        self._tenant_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._warned_at = 0.0

    def apply_to(self, auth: Authenticated) -> bool:
        """Whether any limit applies; without one a submission skips the check entirely."""
        limits = self._limits
        return (effective_limit(auth.submits_per_second, limits.tenant_submits_per_second)
                is not None
                or effective_limit(auth.max_active_jobs, limits.tenant_max_active_jobs)
                is not None)

    def admit(self, auth: Authenticated) -> None:
        """Raises RateLimited (429, with headers) when the tenant is over either limit."""
        tenant = auth.principal.tenant_id
        self._check_rate(tenant, auth.submits_per_second)
        self._check_quota(tenant, auth.max_active_jobs)

    def admit_file(self, auth: Authenticated) -> None:
        """A file upload counts against the submission rate; RateLimited otherwise."""
        self._check_rate(auth.principal.tenant_id, auth.submits_per_second)

    def admit_batch(self, auth: Authenticated) -> None:
        """The submission rate and the batch caps; RateLimited (429, with headers) when the
        tenant is over any of them.

        A new batch's line count is unknown until it is validated, so it is refused only
        when the tenant's lines are already at the cap; a batch may take it past the cap
        by at most its own lines (VLMQ_BATCH_MAX_LINES), as may each of the batches created
        at the same moment, which the cap on active batches bounds.
        """
        tenant = auth.principal.tenant_id
        limits = self._limits
        self._check_rate(tenant, auth.submits_per_second)
        max_batches = effective_limit(auth.max_active_batches, limits.tenant_max_active_batches)
        max_lines = effective_limit(auth.max_queued_batch_lines,
                                    limits.tenant_max_queued_batch_lines)
        if max_batches is None and max_lines is None:
            return
        with self._reads() as session:
            if max_batches is not None and usage.active_batches(session, tenant) >= max_batches:
                raise _refusal(
                    f"tenant {tenant!r} has {max_batches} batches in progress, its limit",
                    max_batches, _BATCH_RETRY_AFTER)
            if max_lines is not None and usage.queued_batch_lines(session, tenant) >= max_lines:
                raise _refusal(
                    f"tenant {tenant!r} has {max_lines} or more batch lines queued or "
                    "running, its limit", max_lines, _BATCH_RETRY_AFTER)

    def rules(self, tenant: str) -> TenantRules:
        """The tenant's own settings, read at most once a second per process."""
        now = time.monotonic()
        with self._lock:
            cached = self._rules.get(tenant)
        if cached is not None and now - cached[1] < _RULES_FRESH_SECONDS:
            return cached[0]
        with self._reads() as session:
            rules = tenant_rules(session, tenant)
        with self._lock:
            self._rules[tenant] = (rules, now)
        return rules

    def image_prefixes(self, tenant: str) -> tuple[str, ...]:
        """The `s3://bucket/prefix`es the tenant may name as images."""
        return self.rules(tenant).image_url_prefixes

    @contextmanager
    def reserve(self, tenant: str) -> Iterator[Reservation]:
        """Wraps one job's insert: says whether it must be counted under the tenant's lock,
        and keeps this process's count of the tenant's active jobs up to date."""
        rules = self.rules(tenant)
        limits = self._limits
        limit = effective_limit(rules.max_active_jobs, limits.tenant_max_active_jobs)
        if limit is None:
            yield Reservation(None)
            return
        rate = effective_limit(rules.submits_per_second, limits.tenant_submits_per_second)
        headroom = math.ceil(rate * _HEADROOM_SECONDS) if rate is not None else limit
        if self._active(tenant, fresh=False) + self._pending_of(tenant) + headroom < limit:
            yield from self._fast(tenant)
            return
        with self._tenant_lock(tenant):
            reservation = Reservation(limit)
            yield reservation
            if reservation.counted is not None:  # a count as fresh as can be
                with self._lock:
                    self._counts[tenant] = _Count(reservation.counted + 1, time.monotonic())

    def quota_refusal(self, tenant: str, limit: int) -> RateLimited:
        return _refusal(f"tenant {tenant!r} has {limit} jobs queued or running, its limit",
                        limit, _QUOTA_RETRY_AFTER)

    def _fast(self, tenant: str) -> Iterator[Reservation]:
        with self._lock:
            self._pending[tenant] = self._pending.get(tenant, 0) + 1
        inserted = False
        try:
            yield Reservation(None)
            inserted = True
        finally:
            with self._lock:  # both at once: no moment where the job is in neither
                self._pending[tenant] -= 1
                count = self._counts.get(tenant)
                if inserted and count is not None:
                    count.value += 1

    def _pending_of(self, tenant: str) -> int:
        with self._lock:
            return self._pending.get(tenant, 0)

    def _tenant_lock(self, tenant: str) -> threading.Lock:
        with self._lock:
            return self._tenant_locks.setdefault(tenant, threading.Lock())

    def _check_rate(self, tenant: str, own_rate: float | None) -> None:
        rate = effective_limit(own_rate, self._limits.tenant_submits_per_second)
        if rate is None:
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
        limit = effective_limit(own_limit, self._limits.tenant_max_active_jobs)
        if limit is None:
            return
        pending = self._pending_of(tenant)
        if (self._active(tenant, fresh=False) + pending < limit
                or self._active(tenant, fresh=True) + pending < limit):
            return
        raise self.quota_refusal(tenant, limit)

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


def _refusal(what: str, limit: int, retry_after: int) -> RateLimited:
    return RateLimited(
        f"{what}; submit more as they finish, or ask an operator to raise it "
        "(`vlmq keys limits`)",
        code="quota_exceeded",
        headers={
            "Retry-After": str(retry_after),
            "RateLimit-Limit": str(limit),
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(retry_after),
        },
    )


def _per_window(rate: float) -> RateLimitItem:
    """A rate as a count per whole-second window: 0.5/s is 1 per 2 s."""
    if rate >= 1:
        return RateLimitItemPerSecond(round(rate))
    return RateLimitItemPerSecond(1, max(1, round(1 / rate)))


def _storage(broker: BrokerSettings) -> Storage:
    if is_redis(broker.broker_url):
        return storage_from_string(broker.broker_url, socket_timeout=_REDIS_TIMEOUT,
                                   socket_connect_timeout=_REDIS_TIMEOUT)
    return storage_from_string("memory://")
