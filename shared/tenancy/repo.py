"""Repository functions for tenants and API keys. They flush; callers commit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.errors import InvalidInput, NotFound
from shared.models import ApiKey, Tenant
from shared.net.image_refs import canonical_prefix
from shared.tenancy import keys, limits
from shared.tenancy.limits import KEEP, Unchanged
from shared.tenancy.principal import Principal
from shared.timeutil import as_utc, utcnow

# last_used_at is for people ("is this key still in use?"), so minute precision will do
# and a busy key costs one write a minute, not one per request.
_LAST_USED_PRECISION = timedelta(seconds=60)


def ensure_tenant(session: Session, tenant_id: str) -> Tenant:
    if not keys.TENANT_NAME.match(tenant_id):
        raise InvalidInput(
            f"tenant name {tenant_id!r}: use 1 to 64 lowercase letters, digits, '.', '_' or "
            "'-', starting with a letter or digit", code="invalid_tenant",
        )
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        tenant = Tenant(id=tenant_id, created_at=utcnow())
        session.add(tenant)
        session.flush()
    return tenant


def set_limits(session: Session, tenant_id: str, *,
               max_active_jobs: int | None | Unchanged = KEEP,
               submits_per_second: float | None | Unchanged = KEEP,
               max_queued_batch_lines: int | None | Unchanged = KEEP,
               max_active_batches: int | None | Unchanged = KEEP,
               retention_seconds: int | None | Unchanged = KEEP,
               keep_images: bool | None | Unchanged = KEEP,
               image_url_prefixes: Sequence[str] | None | Unchanged = KEEP) -> Tenant:
    """Sets a tenant's own settings (shared/tenancy/limits.py says what they mean): KEEP
    leaves one as it is, None returns it to the server's default, 0 lifts a limit (and
    keeps for ever, for retention). `image_url_prefixes` replaces the tenant's list (None
    or empty: it may name none, the default). Every value is checked before any is set,
    so a refused call changes nothing."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"no tenant {tenant_id!r}")
    changes: dict[str, object] = {}
    for name, value in (("max_active_jobs", max_active_jobs),
                        ("max_queued_batch_lines", max_queued_batch_lines),
                        ("max_active_batches", max_active_batches)):
        if value is not KEEP:
            changes[name] = None if value is None else limits.check_count(name, value)
    if submits_per_second is not KEEP:
        changes["submits_per_second"] = (None if submits_per_second is None else
                                         limits.check_rate("submits_per_second",
                                                           submits_per_second))
    if retention_seconds is not KEEP:
        changes["retention_seconds"] = (None if retention_seconds is None
                                        else limits.check_retention(retention_seconds))
    if keep_images is not KEEP:
        if keep_images is not None and not isinstance(keep_images, bool):
            raise InvalidInput(f"keep_images: true, false or null, not {keep_images!r}",
                               code="invalid_limit")
        changes["keep_images"] = keep_images
    if image_url_prefixes is not KEEP:
        canonical = list(dict.fromkeys(canonical_prefix(p) for p in image_url_prefixes or ()))
        changes["image_url_prefixes"] = canonical or None
    for name, value in changes.items():
        setattr(tenant, name, value)
    session.flush()
    return tenant


@dataclass(frozen=True)
class TenantRules:
    """A tenant's own settings as the submit path reads them: None means the server's
    default, 0 no limit (`shared.tenancy.limits.effective_limit` says which applies)."""

    max_active_jobs: int | None = None
    submits_per_second: float | None = None
    image_url_prefixes: tuple[str, ...] = ()


def tenant_rules(session: Session, tenant_id: str) -> TenantRules:
    """One primary-key read; a tenant without a row (auth turned off) has the defaults."""
    row = session.execute(
        select(Tenant.max_active_jobs, Tenant.submits_per_second, Tenant.image_url_prefixes)
        .where(Tenant.id == tenant_id)
    ).one_or_none()
    if row is None:
        return TenantRules()
    return TenantRules(row.max_active_jobs, row.submits_per_second,
                       tuple(row.image_url_prefixes or ()))


def create_key(session: Session, tenant_id: str, name: str | None,
               is_admin: bool) -> tuple[ApiKey, str]:
    """A new key for the tenant (created if new); returns the row and the secret key."""
    ensure_tenant(session, tenant_id)
    new = keys.generate()
    row = ApiKey(id=new.id, tenant_id=tenant_id, name=name, secret_sha256=new.secret_sha256,
                 is_admin=is_admin, created_at=utcnow())
    session.add(row)
    session.flush()
    return row, new.key


def list_keys(session: Session, tenant_id: str | None = None) -> list[ApiKey]:
    stmt = select(ApiKey).order_by(ApiKey.tenant_id, ApiKey.created_at)
    if tenant_id is not None:
        stmt = stmt.where(ApiKey.tenant_id == tenant_id)
    return list(session.scalars(stmt))


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.id)))


def revoke_key(session: Session, key_id: str) -> ApiKey:
    key = session.get(ApiKey, key_id.removeprefix(keys.PREFIX))
    if key is None:
        raise NotFound(f"no API key with id {key_id!r}; `vlmq keys list` shows them")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


@dataclass(frozen=True)
class Authenticated:
    principal: Principal
    # The tenant's own limits: None means the server's default, 0 no limit
    # (`shared.tenancy.limits.effective_limit`).
    max_active_jobs: int | None
    submits_per_second: float | None
    max_queued_batch_lines: int | None = None
    max_active_batches: int | None = None
    # The tenant's own retention settings; None means the server's default (retention 0:
    # kept for ever).
    keep_images: bool | None = None
    retention_seconds: int | None = None


def authenticate(session: Session, presented: str) -> Authenticated | None:
    """The principal of a live key, or None for an unknown, wrong or revoked one."""
    key_id = keys.key_id_of(presented)
    if key_id is None:
        return None
    row = session.execute(
        select(ApiKey, Tenant).join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.id == key_id)
    ).one_or_none()
    if row is None:
        return None
    key, tenant = row
    if key.revoked_at is not None or not keys.matches(presented, key.secret_sha256):
        return None
    _touch(session, key.id, key.last_used_at)
    return Authenticated(
        principal=Principal(tenant_id=key.tenant_id, key_id=key.id, is_admin=key.is_admin),
        max_active_jobs=tenant.max_active_jobs,
        submits_per_second=tenant.submits_per_second,
        max_queued_batch_lines=tenant.max_queued_batch_lines,
        max_active_batches=tenant.max_active_batches,
        keep_images=tenant.keep_images,
        retention_seconds=tenant.retention_seconds,
    )


def _touch(session: Session, key_id: str, last_used_at: datetime | None) -> None:
    now = utcnow()
    if last_used_at is not None and now - as_utc(last_used_at) < _LAST_USED_PRECISION:
        return
    session.execute(
        update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
