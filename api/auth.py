"""Bearer-key authentication: every /v1 route depends on `authenticate`."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import ApiDeps, get_deps
from shared.errors import Forbidden, Unauthenticated
from shared.tenancy import repo as tenancy_repo
from shared.tenancy.principal import ANONYMOUS_ADMIN
from shared.tenancy.repo import Authenticated

bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="vlmq_<id>_<secret>",
    description="An API key from `vlmq keys create --tenant NAME`.",
)
_CHALLENGE = 'Bearer realm="vlmq"'


_UNAUTHENTICATED = Authenticated(ANONYMOUS_ADMIN, max_active_jobs=None, submits_per_second=None)


async def authenticate(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    deps: ApiDeps = Depends(get_deps),
) -> Authenticated:
    if deps.settings.auth_disabled:
        request.state.tenant = _UNAUTHENTICATED.principal.tenant_id
        return _UNAUTHENTICATED
    if credentials is None:
        raise Unauthenticated(
            "send `Authorization: Bearer <key>`; an operator creates keys with "
            "`vlmq keys create --tenant NAME`",
            code="missing_api_key", headers={"WWW-Authenticate": _CHALLENGE},
        )
    presented = credentials.credentials
    auth = deps.keys.get(presented)
    if auth is None:
        auth = await run_in_threadpool(_lookup, deps, presented)
        if auth is None:
            raise Unauthenticated(
                "this API key is unknown or revoked; ask an operator for a new one",
                code="invalid_api_key",
                headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
            )
        deps.keys.put(presented, auth)
    request.state.tenant = auth.principal.tenant_id  # for the request metrics
    return auth


def _lookup(deps: ApiDeps, presented: str) -> Authenticated | None:
    with deps.reads() as session:
        return tenancy_repo.authenticate(session, presented)


async def require_admin(auth: Authenticated = Depends(authenticate)) -> Authenticated:
    """For operations on keys and tenants, which no tenant may do for itself."""
    if not auth.principal.is_admin:
        raise Forbidden("only an admin key may manage keys and tenants "
                        "(`vlmq keys create --tenant NAME --admin`)")
    return auth
