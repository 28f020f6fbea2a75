"""Usage reports: the device report (``POST /v1/usage``) and the admin listing."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from sklicense import crud, db, service
from sklicense.api.deps import (
    AdminDep,
    ClockDep,
    CustomerIdQuery,
    EngineDep,
    JsonBodyDep,
    PageDep,
    SessionDep,
    SessionsDep,
    SettingsDep,
    SignatureDep,
)
from sklicense.api.rate_limits import DeviceLimit, device_rate_limited
from sklicense.api.routes.applications import raise_http
from sklicense.api.routes.licences import invalid, signed
from sklicense.decision import bad_signature, unregistered
from sklicense.schemas import UsageReportIn, UsageReportPublic, aware_datetime
from sklicense.settings import Settings
from skruntime.licensing.protocol import USAGE_PATH

PeriodBound = Annotated[str | None, Query(max_length=64)]
router = APIRouter(tags=["device"])
admin_router = APIRouter(prefix="/usage", tags=["admin"])


@router.post("/usage")
def report_usage(
    request: Request,
    body: JsonBodyDep,
    signature: SignatureDep,
    sessions: SessionsDep,
    engine: EngineDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> JSONResponse:
    """Report a licence's inference counter (idempotent per ``report_id``). Unsigned reports
    are refused before the transaction; a device's signed reports, a revoked device's included,
    are limited to ``usage_reports_per_minute``. Every answer is signed: only a signed receipt
    acknowledges a report on the device."""
    key = request.app.state.signing_key
    answer = _apply_report(body, signature, sessions, engine, settings, clock)
    return signed(USAGE_PATH, body, answer, key)


def _apply_report(
    body: dict[str, Any],
    signature: str | None,
    sessions: sessionmaker[Session],
    engine: Engine,
    settings: Settings,
    clock: Callable[[], int],
) -> JSONResponse:
    """The answer to a usage report, before it is signed."""
    try:
        report = UsageReportIn.model_validate(body)
    except ValidationError as e:
        return invalid(e)
    with db.device_writes(settings.database_url, settings.database_pool_timeout_s):
        now = clock()
        verified, registered = service.signed_by_device(sessions, report.device_id, body, signature)
        if verified is None:
            deny = bad_signature(registered=True) if registered else unregistered(report.device_id)
            outcome = service.refuse_unsigned("usage report", report.device_id, deny)
            return JSONResponse(status_code=outcome.status, content=outcome.body)
        limited = device_rate_limited(
            engine,
            sessions,
            DeviceLimit("usage", "usage reports", "usage.deny", settings.usage_reports_per_minute),
            report.device_id,
            report.timestamp,
            f"licence:{report.licence_id}",
            now,
        )
        if limited is not None:
            return limited
        outcome = service.report_usage(sessions, report, body, signature, now, verified)
    return JSONResponse(status_code=outcome.status, content=outcome.body)


@admin_router.get("", response_model=list[UsageReportPublic])
def list_usage(
    admin: AdminDep,
    session: SessionDep,
    page: PageDep,
    response: Response,
    customer_id: CustomerIdQuery = None,
) -> list[UsageReportPublic]:
    """List usage reports (optionally of one customer; a page)."""
    reports = page.of(lambda n, skip: crud.list_usage(session, customer_id, n, skip), response)
    return [UsageReportPublic.model_validate(r) for r in reports]


@admin_router.get("/summary")
def usage_summary(
    admin: AdminDep,
    session: SessionDep,
    page: PageDep,
    response: Response,
    customer_id: CustomerIdQuery = None,
    since: PeriodBound = None,
    until: PeriodBound = None,
) -> list[dict[str, Any]]:
    """Per licence: the latest reported counter and the licence's allowance (a page); with
    ``since`` and/or ``until`` (ISO 8601 with a zone), the usage reported in that period."""
    start, end = period_bound(since, "since"), period_bound(until, "until")
    try:
        return list(
            page.of(
                lambda n, skip: crud.usage_summary(session, customer_id, n, skip, start, end),
                response,
            )
        )
    except crud.CrudError as e:
        raise raise_http(e) from None


PERIOD_HELP = "ISO 8601 with a zone, e.g. 2026-11-01T00:00:00+01:00"


def period_bound(text: str | None, name: str) -> dt.datetime | None:
    """``since`` / ``until`` of the usage summary: ISO 8601 text with a zone (422 otherwise)."""
    if text is None:
        return None
    # a "+" not sent as %2B arrives as a space: 2026-03-01T00:00:00 01:00
    text = re.sub(r"(\d\d:\d\d(?::\d\d(?:\.\d+)?)?) (\d\d(?::?\d\d)?)$", r"\1+\2", text)
    try:
        value = aware_datetime(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError as err:
        reason = str(err) if "timezone" in str(err) or "0001" in str(err) else "is not ISO 8601"
        raise HTTPException(status_code=422, detail=f"{name} {reason} ({PERIOD_HELP})") from None
    return value
