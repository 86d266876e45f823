"""Who is calling: the tenant a request acts for, and whether it may act across tenants."""

from __future__ import annotations

from dataclasses import dataclass

# The tenant of jobs from before tenancy existed and of requests while auth is turned off.
DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    key_id: str | None  # None while authentication is turned off
    is_admin: bool = False

    def tenant_filter(self, requested: str | None = None) -> str | None:
        """The tenant a read is limited to; None means every tenant (admins only)."""
        if self.is_admin:
            return requested
        return self.tenant_id

    def may_see(self, tenant_id: str) -> bool:
        return self.is_admin or tenant_id == self.tenant_id


ANONYMOUS_ADMIN = Principal(tenant_id=DEFAULT_TENANT, key_id=None, is_admin=True)
