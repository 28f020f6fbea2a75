"""Licences: the device request (``POST /v1/licences``) and the admin listing."""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from sklicense import crud, db, service
from sklicense.api.deps import (
    AdminDep,
    ClockDep,
    CustomerIdQuery,
    DeviceIdQuery,
    EngineDep,
    JsonBodyDep,
    PageDep,
    SessionDep,
    SessionsDep,
    SettingsDep,
    SignatureDep,
)
from sklicense.api.rate_limits import DeviceLimit, device_rate_limited, rate_limited
from sklicense.crypto import sign_answer
from sklicense.decision import bad_signature
from sklicense.schemas import LicencePublic, LicenceRequestIn
from sklicense.settings import Settings
from skruntime.licensing.protocol import LICENCES_PATH, SIGNATURE_HEADER

logger = logging.getLogger(__name__)
router = APIRouter(tags=["device"])
admin_router = APIRouter(prefix="/licences", tags=["admin"])


MAX_ERRORS_SHOWN = 10
"""A device request's 422 lists this many validation errors, then how many more there were."""


def invalid(error: ValidationError) -> JSONResponse:
    """The 422 of a device request that is not a valid message: never its input, and at most
    :data:`MAX_ERRORS_SHOWN` errors: anyone can send one, and otherwise each of thousands of
    unknown keys (``{"k1":0,"k2":0,...}``, about 10 bytes each) would add an error of about 80
    bytes, an answer 8 times the size of the request."""
    errors = error.errors(include_url=False, include_context=False, include_input=False)
    content: dict[str, Any] = {"detail": errors[:MAX_ERRORS_SHOWN]}
    if len(errors) > MAX_ERRORS_SHOWN:
        content["errors_not_shown"] = len(errors) - MAX_ERRORS_SHOWN
    return JSONResponse(status_code=422, content=content)


def signed(
    path: str, body: dict[str, Any], answer: JSONResponse, key: Ed25519PrivateKey
) -> JSONResponse:
    """``answer`` to the device request ``body`` at ``path``, with the server's signature bound
    to that request (``X-SK-Signature``, ``protocol.answer_message``): the device takes no
    answer for the server's word, an acknowledged usage report or a denial, unless it verifies
    with the pinned key."""
    answer.headers[SIGNATURE_HEADER] = sign_answer(
        path, answer.status_code, body, json.loads(answer.body), key
    )
    return answer


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
    """Ask for a signed licence (body and signature per ``skruntime.licensing.protocol``); every
    answer is signed."""
    key = request.app.state.signing_key
    return signed(
        LICENCES_PATH,
        body,
        _decide_licence(request, body, signature, sessions, engine, settings, clock, key),
        key,
    )


def _decide_licence(
    request: Request,
    body: dict[str, Any],
    signature: str | None,
    sessions: sessionmaker[Session],
    engine: Engine,
    settings: Settings,
    clock: Callable[[], int],
    key: Ed25519PrivateKey,
) -> JSONResponse:
    """The answer to a licence request, before it is signed."""
    try:
        licence_request = LicenceRequestIn.model_validate(body)
    except ValidationError as e:
        return invalid(e)
    # SQLite: requests take turns, no polling
    with db.device_writes(settings.database_url, settings.database_pool_timeout_s):
        now = clock()
        verified, registered = service.signed_by_device(
            sessions,
            licence_request.device_id,
            body,
            signature,
            licence_request.signing_public_key,
        )
        if verified is None:
            outcome = service.refuse_unsigned(
                "licence request",
                licence_request.device_id,
                bad_signature(registered=registered),
            )
            return JSONResponse(status_code=outcome.status, content=outcome.body)
        if not registered:
            sender = _sender(request)
            count = crud.rate_hit(engine, f"new-device:{sender}", now)
            if count > settings.new_device_requests_per_minute:
                # a flood of fresh identities: refused unaudited, or each would add audit rows
                logger.warning("licence requests of new devices from %s rate limited", sender)
                return rate_limited(
                    f"more than {settings.new_device_requests_per_minute} licence requests of "
                    f"unregistered devices came from {sender} this minute; retry later",
                    now,
                )
        limited_or_resent = device_rate_limited(
            engine,
            sessions,
            DeviceLimit(
                "licence", "licence requests", "licence.deny", settings.licence_requests_per_minute
            ),
            licence_request.device_id,
            licence_request.timestamp,
            f"customer:{licence_request.customer_id}",
            now,
            lambda: _resent(sessions, licence_request, now, key),
        )
        if limited_or_resent is not None:
            return limited_or_resent
        outcome = service.request_licence(
            sessions,
            licence_request,
            body,
            signature,
            now,
            key,
            verified,
        )
    return JSONResponse(status_code=outcome.status, content=outcome.body)


def _resent(
    sessions: sessionmaker[Session], request: LicenceRequestIn, now: int, key: Ed25519PrivateKey
) -> JSONResponse | None:
    """The licence already granted to ``request``, sent again past the device's rate limit
    (:func:`service.resend_past_limit`), or None."""
    resent = service.resend_past_limit(sessions, request, now, key)
    return None if resent is None else JSONResponse(status_code=resent.status, content=resent.body)


@admin_router.get("", response_model=list[LicencePublic])
def list_licences(
    admin: AdminDep,
    session: SessionDep,
    page: PageDep,
    response: Response,
    customer_id: CustomerIdQuery = None,
    device_id: DeviceIdQuery = None,
) -> list[LicencePublic]:
    """List issued licences, newest first (a page)."""
    licences = page.of(
        lambda n, skip: crud.list_licences(session, customer_id, device_id, n, skip), response
    )
    return [LicencePublic.model_validate(lic) for lic in licences]
