"""Usage over a window, scoped to what the caller's key may see."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from shared.tenancy.principal import Principal
from shared.usage import report


@dataclass(frozen=True)
class UsageAnswer:
    window: report.Window
    group_by: str
    tenant: str | None  # None: every tenant
    rows: list[report.Usage]


def usage(reads: sessionmaker[Session], principal: Principal, *, start: str | None,
          end: str | None, group_by: str, tenant: str | None) -> UsageAnswer:
    """A tenant's own usage; an admin key's, every tenant's unless it names one.
    InvalidInput for a window or grouping that cannot be read."""
    span = report.window(start, end)
    by = report.group_by(group_by)
    scope = principal.tenant_filter(tenant)
    if scope is not None and "\x00" in scope:
        return UsageAnswer(span, by, scope, [])  # no NUL in Postgres: nothing matches
    with reads() as session:
        rows = report.totals(session, span, by, scope)
    return UsageAnswer(span, by, scope, rows)
