"""/v1/keys and /v1/tenants: API keys and tenant limits, for admin keys only (what
`vlmq keys` does from a shell, for the console and for automation)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from api.auth import require_admin
from api.deps import ApiDeps, get_deps
from api.errors import documented
from api.schemas.admin import (
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyOut,
    TenantDefaults,
    TenantLimits,
    TenantList,
    TenantOut,
)
from api.services import keys as service

router = APIRouter(prefix="/v1", tags=["keys"], dependencies=[Depends(require_admin)])


@router.get("/keys", response_model=KeyList, responses=documented(403))
def list_keys(
    deps: ApiDeps = Depends(get_deps),
    tenant: Annotated[str | None, Query(max_length=64, description="one tenant's keys")] = None,
) -> KeyList:
    """Every key (revoked ones too), by tenant; never a secret."""
    return KeyList(data=[KeyOut.from_row(k) for k in service.list_keys(deps.reads, tenant)])


@router.post("/keys", status_code=201, response_model=KeyCreated,
             responses=documented(400, 403, 422))
def create_key(body: KeyCreate, deps: ApiDeps = Depends(get_deps)) -> KeyCreated:
    """A new key for the tenant (created if new). `key` is in this answer only."""
    row, key = service.create_key(deps.sessions, body.tenant, body.name, body.admin)
    return KeyCreated(**KeyOut.from_row(row).model_dump(), key=key)


@router.post("/keys/{key_id}/revoke", response_model=KeyOut, responses=documented(403, 404))
def revoke_key(key_id: str, deps: ApiDeps = Depends(get_deps)) -> KeyOut:
    """The key stops working within a second; revoking it again changes nothing."""
    return KeyOut.from_row(service.revoke_key(deps.sessions, key_id))


@router.get("/tenants", response_model=TenantList, responses=documented(403))
def list_tenants(deps: ApiDeps = Depends(get_deps)) -> TenantList:
    """Each tenant's own settings (null: the server's, which `defaults` gives; 0: no limit)."""
    return TenantList(data=[TenantOut.from_row(t) for t in service.list_tenants(deps.reads)],
                      defaults=TenantDefaults.from_settings(deps.settings))


@router.patch("/tenants/{tenant_id}", response_model=TenantOut,
              responses=documented(400, 403, 404, 422))
def set_limits(tenant_id: str, body: TenantLimits,
               deps: ApiDeps = Depends(get_deps)) -> TenantOut:
    """The tenant's own limits and retention: a field left out stays, null returns it to
    the server's default, 0 lifts a limit for this tenant (a retention of 0 keeps for ever)."""
    return TenantOut.from_row(service.set_limits(deps.sessions, tenant_id, body.changes()))
