"""Licences: the device request (``POST /v1/licences``) and the admin listing."""

from __future__ import annotations

import ipaddress
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from sklicense import crud, db, service
from sklicense.api.deps import (
    AdminDep,
    ClockDep,
    CustomerIdQuery,
    DeviceIdQuery,
    EngineDep,
    JsonBodyDep,
    SessionDep,
    SessionsDep,
    SettingsDep,
    SignatureDep,
)
from sklicense.schemas import LicencePublic, LicenceRequestIn

logger = logging.getLogger(__name__)
router = APIRouter(tags=["device"])
admin_router = APIRouter(prefix="/licences", tags=["admin"])


def invalid(error: ValidationError) -> JSONResponse:
    return JSONResponse(
        status_code=422,
        # never the input: anyone can send a device request, and echoing it amplifies it
        content={
            "detail": error.errors(include_url=False, include_context=False, include_input=False)
        },
    )


def _sender(request: Request) -> str:
    """The address the new-device limit counts under: an IPv4 address, or an IPv6 address's
    /64 (one host usually holds a whole /64, so counting single addresses would not limit it)."""
    host = request.client.host if request.client else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _rate_limited(detail: str, now: int) -> JSONResponse:
    return JSONResponse(
        status_code=429,
        content={"decision": "deny", "reason": "rate_limited", "detail": detail},
        headers={"Retry-After": str(60 - now % 60)},
    )


@router.post("/licences")
def request_licence(
    request: Request,
    body: JsonBodyDep,
    signature: SignatureDep,
    sessions: SessionsDep,
    engine: EngineDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> JSONResponse:
    """Ask for a signed licence (body and signature per ``skruntime.licensing.protocol``)."""
    try:
        licence_request = LicenceRequestIn.model_validate(body)
    except ValidationError as e:
        return invalid(e)
    with db.device_writes(settings.database_url):  # SQLite: requests take turns, no polling
        now = clock()
        signed, registered = service.signed_by_device(sessions, licence_request, body, signature)
        if not signed:
            outcome = service.refuse_unsigned(licence_request, registered=registered)
            return JSONResponse(status_code=outcome.status, content=outcome.body)
        if not registered:
            sender = _sender(request)
            count = crud.rate_hit(engine, f"new-device:{sender}", now)
            if count > settings.new_device_requests_per_minute:
                # a flood of fresh identities: refused unaudited, or each would add audit rows
                logger.warning("licence requests of new devices from %s rate limited", sender)
                return _rate_limited(
                    f"more than {settings.new_device_requests_per_minute} licence requests of "
                    f"unregistered devices came from {sender} this minute; retry later",
                    now,
                )
        count = crud.rate_hit(engine, f"licence:{licence_request.device_id}", now)
        if count > settings.licence_requests_per_minute:
            detail = (
                f"device {licence_request.device_id} sent more than "
                f"{settings.licence_requests_per_minute} licence requests this minute; retry later"
            )
            with sessions.begin() as session:
                crud.audit(
                    session,
                    f"device:{licence_request.device_id}",
                    "licence.deny",
                    f"customer:{licence_request.customer_id}",
                    {"reason": "rate_limited", "detail": detail},
                )
            return _rate_limited(detail, now)
        outcome = service.request_licence(
            sessions, licence_request, body, signature, now, request.app.state.signing_key
        )
    return JSONResponse(status_code=outcome.status, content=outcome.body)


@admin_router.get("", response_model=list[LicencePublic])
def list_licences(
    admin: AdminDep,
    session: SessionDep,
    customer_id: CustomerIdQuery = None,
    device_id: DeviceIdQuery = None,
) -> list[LicencePublic]:
    """List issued licences, newest first."""
    return [
        LicencePublic.model_validate(lic)
        for lic in crud.list_licences(session, customer_id, device_id)
    ]
