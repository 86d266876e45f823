"""Bodies of the admin routes for API keys and tenants (api/routes/keys.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from shared.models import ApiKey, Tenant
from shared.net.urls import MAX_URL_LENGTH
from shared.settings import Settings
from shared.tenancy.limits import MAX_COUNT, MAX_RATE, MAX_RETENTION_SECONDS

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


_LIMIT_MEANING = "null: the server's default (`defaults`); 0: no limit for this tenant"


class TenantOut(BaseModel):
    id: str
    created_at: datetime
    max_active_jobs: int | None = Field(description=f"queued + running jobs; {_LIMIT_MEANING}")
    submits_per_second: float | None = Field(
        description=f"submissions (jobs, files, batches) per second; {_LIMIT_MEANING}")
    max_queued_batch_lines: int | None = Field(
        description=f"batch lines queued or running; {_LIMIT_MEANING}")
    max_active_batches: int | None = Field(
        description=f"batches not yet ended; {_LIMIT_MEANING}")
    retention_seconds: int | None = Field(
        description="how long its jobs, batches and files are kept after they end; null: "
                    "the server's default (`defaults`), 0: for ever")
    keep_images: bool | None = Field(
        description="whether a job's image outlives the job (a job's own `keep_image` "
                    "wins); null: the server's default (`defaults`)")
    image_url_prefixes: list[str] = Field(description="s3:// prefixes it may name as images")

    @classmethod
    def from_row(cls, row: Tenant) -> TenantOut:
        return cls(id=row.id, created_at=row.created_at, max_active_jobs=row.max_active_jobs,
                   submits_per_second=row.submits_per_second,
                   max_queued_batch_lines=row.max_queued_batch_lines,
                   max_active_batches=row.max_active_batches,
                   retention_seconds=row.retention_seconds, keep_images=row.keep_images,
                   image_url_prefixes=list(row.image_url_prefixes or []))


class TenantDefaults(BaseModel):
    """The server's settings (`VLMQ_TENANT_*`, `VLMQ_RETENTION_SECONDS`,
    `VLMQ_KEEP_IMAGES`) that a tenant's null stands for; 0: no limit, or kept for ever."""

    max_active_jobs: int
    submits_per_second: float
    max_queued_batch_lines: int
    max_active_batches: int
    retention_seconds: int
    keep_images: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> TenantDefaults:
        return cls(max_active_jobs=settings.tenant_max_active_jobs,
                   submits_per_second=settings.tenant_submits_per_second,
                   max_queued_batch_lines=settings.tenant_max_queued_batch_lines,
                   max_active_batches=settings.tenant_max_active_batches,
                   retention_seconds=settings.retention_seconds,
                   keep_images=settings.keep_images)


class TenantList(BaseModel):
    data: list[TenantOut]
    defaults: TenantDefaults


# Strict: a limit is a JSON number, never a string or a boolean that would pass as one.
_Count = Annotated[int, Field(ge=0, le=MAX_COUNT, strict=True)]


class TenantLimits(BaseModel):
    """What to change. A field left out stays as it is; null returns it to the server's
    default; a limit of 0 lifts it for this tenant (and a retention of 0 keeps for ever)."""

    model_config = ConfigDict(extra="forbid")

    max_active_jobs: _Count | None = None
    submits_per_second: float | None = Field(default=None, ge=0, le=MAX_RATE,
                                             allow_inf_nan=False, strict=True)
    max_queued_batch_lines: _Count | None = None
    max_active_batches: _Count | None = None
    retention_seconds: int | None = Field(default=None, ge=0, le=MAX_RETENTION_SECONDS,
                                          strict=True, description="0: for ever")
    keep_images: bool | None = Field(default=None, strict=True)
    image_url_prefixes: list[Annotated[str, Field(max_length=MAX_URL_LENGTH)]] | None = Field(
        default=None, max_length=MAX_IMAGE_URL_PREFIXES,
        description="replaces the tenant's list; [] or null allows no s3:// image")

    def changes(self) -> dict[str, Any]:
        """The fields the body names, null ones included (they clear a setting)."""
        return {name: getattr(self, name) for name in self.model_fields_set}
