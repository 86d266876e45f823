"""`GET /v1/usage`: what the caller's tenant (an admin key: every tenant) used, per model or
per day, from the usage ledger (shared/usage/)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from api.auth import authenticate
from api.deps import ApiDeps, get_deps
from api.errors import documented
from api.schemas.usage import UsageCounters, UsageReport, UsageRow
from api.services import usage as service
from shared.tenancy.repo import Authenticated
from shared.usage import report

router = APIRouter(prefix="/v1/usage", tags=["usage"])

_MOMENT = ("ISO 8601 date or time, UTC unless it gives a zone (e.g. 2025-06-01 or "
           "2025-06-01T12:00:00Z)")


@router.get("", response_model=UsageReport, responses=documented(400, 422))
def get_usage(
    deps: ApiDeps = Depends(get_deps),
    auth: Authenticated = Depends(authenticate),
    start: Annotated[str | None, Query(
        description=f"{_MOMENT}; default: {report.DEFAULT_DAYS} days before `end`")] = None,
    end: Annotated[str | None, Query(description=f"{_MOMENT}; default: now")] = None,
    group_by: Annotated[str, Query(
        description="totals per tenant and `model`, or per tenant and UTC `day`",
        json_schema_extra={"enum": list(report.GROUPS)})] = "model",
    tenant: Annotated[str | None, Query(
        max_length=64, description="admin keys only: one tenant's (default: every tenant's)"
    )] = None,
) -> UsageReport:
    """Jobs accepted and ended by outcome, images, tokens and engine seconds over the hours
    that begin in [start, end), at most 400 days. The ledger is written with each job's
    outcome and outlives the jobs' deletion."""
    answer = service.usage(deps.reads, auth.principal, start=start, end=end,
                           group_by=group_by, tenant=tenant)
    rows = [UsageRow(tenant=u.tenant_id, model=u.model, day=u.day, **u.counters.__dict__)
            for u in answer.rows]
    return UsageReport(start=answer.window.start, end=answer.window.end,
                       group_by=answer.group_by,  # type: ignore[arg-type]
                       tenant=answer.tenant, data=rows,
                       total=UsageCounters.of(report.grand_total(answer.rows)))
