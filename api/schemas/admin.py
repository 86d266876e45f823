"""Bodies of the admin routes for API keys and tenants (api/routes/keys.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from shared.models import ApiKey, Tenant
from shared.net.urls import MAX_URL_LENGTH

# More prefixes than any tenant needs; the list is stored whole in the tenant's row.
MAX_IMAGE_URL_PREFIXES = 100


class KeyOut(BaseModel):
    id: str = Field(description="the key's public id (`vlmq_<id>_…`); never its secret")
    tenant: str
    name: str | None
    admin: bool
    created_at: datetime
    last_used_at: datetime | None = Field(description="to the minute")
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: ApiKey) -> KeyOut:
        return cls(id=row.id, tenant=row.tenant_id, name=row.name, admin=row.is_admin,
                   created_at=row.created_at, last_used_at=row.last_used_at,
                   revoked_at=row.revoked_at)


class KeyCreated(KeyOut):
    key: str = Field(description="the key itself: shown in this answer only, never again "
                     "(only its SHA-256 is stored)")


class KeyList(BaseModel):
    data: list[KeyOut]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(max_length=64, description="created if new")
    # Postgres text holds no NUL.
    name: str | None = Field(default=None, max_length=200, pattern=r"^[^\x00]*$",
                             description="a label, e.g. the service that uses the key")
    admin: bool = Field(default=False, description="acts on every tenant's objects")


class TenantOut(BaseModel):
    id: str
    created_at: datetime
    max_active_jobs: int | None = Field(description="null: the server's default")
    submits_per_second: float | None
    max_queued_batch_lines: int | None
    max_active_batches: int | None
    image_url_prefixes: list[str] = Field(description="s3:// prefixes it may name as images")

    @classmethod
    def from_row(cls, row: Tenant) -> TenantOut:
        return cls(id=row.id, created_at=row.created_at, max_active_jobs=row.max_active_jobs,
                   submits_per_second=row.submits_per_second,
                   max_queued_batch_lines=row.max_queued_batch_lines,
                   max_active_batches=row.max_active_batches,
                   image_url_prefixes=list(row.image_url_prefixes or []))


class TenantList(BaseModel):
    data: list[TenantOut]


class TenantLimits(BaseModel):
    """What to change: an absent field stays as it is, 0 goes back to the server's default."""

    model_config = ConfigDict(extra="forbid")

    max_active_jobs: int | None = Field(default=None, ge=0, le=2**31 - 1)
    submits_per_second: float | None = Field(default=None, ge=0, le=1e9, allow_inf_nan=False)
    max_queued_batch_lines: int | None = Field(default=None, ge=0, le=2**31 - 1)
    max_active_batches: int | None = Field(default=None, ge=0, le=2**31 - 1)
    image_url_prefixes: list[Annotated[str, Field(max_length=MAX_URL_LENGTH)]] | None = Field(
        default=None, max_length=MAX_IMAGE_URL_PREFIXES,
        description="replaces the tenant's list; [] allows no s3:// image")
