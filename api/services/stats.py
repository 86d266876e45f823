"""Throughput over time, scoped to what the caller's key may see."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from shared.jobs import throughput
from shared.tenancy.principal import Principal


def throughput_per_minute(reads: sessionmaker[Session], principal: Principal, *,
                          minutes: int, model: str | None,
                          tenant: str | None) -> list[throughput.Minute]:
    """A tenant's own jobs; an admin key's, every tenant's unless it names one."""
    if any(v is not None and "\x00" in v for v in (model, tenant)):
        return throughput.per_minute_empty(minutes)  # no NUL in Postgres: nothing matches
    with reads() as session:
        return throughput.per_minute(session, minutes, tenant_id=principal.tenant_filter(tenant),
                                     model=model)
