"""API keys and tenants for admin keys: the same repository the `vlmq keys` command uses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from shared.errors import NotFound
from shared.models import ApiKey, Tenant
from shared.tenancy import keys as key_format
from shared.tenancy import repo


def list_keys(reads: sessionmaker[Session], tenant: str | None) -> list[ApiKey]:
    if tenant is not None and "\x00" in tenant:
        return []  # no NUL in Postgres, and so no tenant of that name
    with reads() as session:
        return repo.list_keys(session, tenant)


def create_key(sessions: sessionmaker[Session], tenant: str, name: str | None,
               admin: bool) -> tuple[ApiKey, str]:
    """The new key's row and the key itself, which nothing can show again."""
    with sessions.begin() as session:
        return repo.create_key(session, tenant, name, admin)


def revoke_key(sessions: sessionmaker[Session], key_id: str) -> ApiKey:
    """Revoked at once in the database; API processes stop accepting it within a second
    (api/infra/key_cache.py)."""
    if "\x00" in key_id:
        raise NotFound(f"no API key with id {key_id!r}")
    with sessions.begin() as session:
        return repo.revoke_key(session, key_id)


def list_tenants(reads: sessionmaker[Session]) -> list[Tenant]:
    with reads() as session:
        return repo.list_tenants(session)


def set_limits(sessions: sessionmaker[Session], tenant_id: str,
               changes: Mapping[str, Any]) -> Tenant:
    """Sets the named settings of the tenant (`repo.set_limits`: None is the server's
    default, 0 no limit); the others stay. Takes effect within a second on every API
    process (their tenant rules are read at most once a second)."""
    if not key_format.TENANT_NAME.match(tenant_id):
        raise NotFound(f"no tenant {tenant_id!r}")
    with sessions.begin() as session:
        return repo.set_limits(session, tenant_id, **changes)
