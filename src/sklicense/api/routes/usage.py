"""Usage reports: the device report (``POST /v1/usage``) and the admin listing."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from sklicense import crud, db, service
from sklicense.api.deps import (
    AdminDep,
    ClockDep,
    CustomerIdQuery,
    JsonBodyDep,
    SessionDep,
    SessionsDep,
    SettingsDep,
    SignatureDep,
)
from sklicense.api.routes.licences import invalid
from sklicense.schemas import UsageReportIn, UsageReportPublic

router = APIRouter(tags=["device"])
admin_router = APIRouter(prefix="/usage", tags=["admin"])


@router.post("/usage")
def report_usage(
    body: JsonBodyDep,
    signature: SignatureDep,
    sessions: SessionsDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> JSONResponse:
    """Report a licence's inference counter (idempotent per ``report_id``)."""
    try:
        report = UsageReportIn.model_validate(body)
    except ValidationError as e:
        return invalid(e)
    with db.device_writes(settings.database_url):
        outcome = service.report_usage(sessions, report, body, signature, clock())
    return JSONResponse(status_code=outcome.status, content=outcome.body)


@admin_router.get("", response_model=list[UsageReportPublic])
def list_usage(
    admin: AdminDep, session: SessionDep, customer_id: CustomerIdQuery = None
) -> list[UsageReportPublic]:
    """List usage reports (optionally of one customer)."""
    return [UsageReportPublic.model_validate(r) for r in crud.list_usage(session, customer_id)]


@admin_router.get("/summary")
def usage_summary(
    admin: AdminDep, session: SessionDep, customer_id: CustomerIdQuery = None
) -> list[dict[str, Any]]:
    """Per licence: the latest reported counter and the licence's allowance."""
    return crud.usage_summary(session, customer_id)
