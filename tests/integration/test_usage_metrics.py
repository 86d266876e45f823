"""The control process's usage counters on Postgres: `vlmq_usage_*_total{tenant,model}`
equal the ledger's sums over every shard and hour, a scrape within the cache reads nothing,
hours that settle as time passes are neither lost nor counted twice, and an unreachable
database leaves the counters out."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine, make_session_factory
from shared.settings import Settings
from shared.timeutil import utcnow
from shared.usage import ledger
from tests.helpers.services import free_port
from tests.integration.test_queue_metrics import Clock, scrape
from worker.control.usage_metrics import UsageCollector

NOW = utcnow()


def _count(sessions: sessionmaker[Session], tenant: str, hours_ago: float,
           **counts: float) -> None:
    with sessions.begin() as session:
        tally = ledger.Tally()
        tally.add(tenant, "m", NOW - timedelta(hours=hours_ago), **counts)
        tally.write(session)


def _value(registry: CollectorRegistry, name: str, tenant: str) -> float | None:
    return scrape(registry).get(
        (f"vlmq_usage_{name}_total", frozenset({("tenant", tenant), ("model", "m")})))


def test_the_counters_follow_the_ledger(pg_sessions: sessionmaker[Session]) -> None:
    for hours_ago in (0, 1, 3, 24 * 30):
        _count(pg_sessions, "acme", hours_ago, accepted=2, succeeded=1, engine_seconds=0.5)
    _count(pg_sessions, "globex", 0, accepted=1, images=1)
    clock, now = Clock(), [NOW]
    collector = UsageCollector(pg_sessions, cache_seconds=5, clock=clock,
                               now=lambda: now[0])
    registry = CollectorRegistry()
    registry.register(collector)
    assert _value(registry, "accepted", "acme") == 8
    assert _value(registry, "engine_seconds", "acme") == 2.0
    assert (_value(registry, "accepted", "globex"), _value(registry, "images", "globex"),
            _value(registry, "succeeded", "globex")) == (1, 1, 0)
    assert scrape(registry)[("vlmq_usage_stats_up", frozenset())] == 1

    _count(pg_sessions, "acme", 0, accepted=1)
    assert _value(registry, "accepted", "acme") == 8  # within the cache: the last read
    clock.now += 6
    assert _value(registry, "accepted", "acme") == 9
    for _ in range(3):  # the recent hours settle one by one: each counted once
        now[0] += timedelta(hours=1)
        clock.now += 6
        assert _value(registry, "accepted", "acme") == 9


def test_an_unreachable_database_leaves_the_counters_out() -> None:
    settings = Settings(database_url=f"postgresql://vlmq@127.0.0.1:{free_port()}/vlmq")
    engine = make_engine(settings)
    try:
        registry = CollectorRegistry()
        registry.register(UsageCollector(make_session_factory(engine)))
        samples = scrape(registry)
    finally:
        engine.dispose()
    assert samples[("vlmq_usage_stats_up", frozenset())] == 0
    assert not [name for name, _ in samples if name.startswith("vlmq_usage_")
                and name != "vlmq_usage_stats_up"]
