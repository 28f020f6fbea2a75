"""Annotated dependencies: settings, clock, database sessions, admin authentication."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Path, Query, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from sklicense import crud
from sklicense.schemas import INT64_MAX
from sklicense.settings import Settings
from skruntime.licensing.protocol import MAX_DEVICE_BODY, SIGNATURE_HEADER, canonical_bytes


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_clock(request: Request) -> Callable[[], int]:
    """The server clock (Unix seconds); tests replace ``app.state.clock``."""
    return request.app.state.clock


def get_sessions(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessions


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_session(
    sessions: Annotated[sessionmaker[Session], Depends(get_sessions)],
) -> Iterator[Session]:
    with sessions() as session:
        yield session


CustomerIdPath = Annotated[int, Path(ge=0, le=INT64_MAX)]
"""A customer id in a URL path: larger ones do not fit the database (422, not 500)."""
CustomerIdQuery = Annotated[int | None, Query(ge=0, le=INT64_MAX)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ClockDep = Annotated[Callable[[], int], Depends(get_clock)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
SessionDep = Annotated[Session, Depends(get_session)]
EngineDep = Annotated[Engine, Depends(get_engine)]


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


async def get_json_body(request: Request) -> dict[str, Any]:
    """The raw JSON object of a device request (the signature covers exactly these fields).

    Anyone can send one before the signature is checked, so it is bounded and strict: at most
    :data:`MAX_DEVICE_BODY` bytes (413), and no NaN/Infinity, nesting beyond Python's recursion
    limit or lone surrogates in strings (400), each of which would otherwise fail later as a 500.
    """
    raw = await request.body()
    if len(raw) > MAX_DEVICE_BODY:
        raise HTTPException(
            status_code=413, detail=f"the request body is over {MAX_DEVICE_BODY} bytes"
        )
    try:
        body = json.loads(raw, parse_constant=_no_constant)
        canonical_bytes(body)  # what the signature check will encode: lone surrogates fail here
    except (ValueError, UnicodeError, RecursionError):
        raise HTTPException(status_code=400, detail="the request body must be JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(status_code=400, detail="the request body must be a JSON object")
    return body


JsonBodyDep = Annotated[dict[str, Any], Depends(get_json_body)]


def get_signature(
    signature: Annotated[str | None, Header(alias=SIGNATURE_HEADER)] = None,
) -> str | None:
    """The device's Ed25519 signature header (a missing one fails as ``bad_signature``)."""
    return signature


SignatureDep = Annotated[str | None, Depends(get_signature)]


class Admin:
    """The authenticated admin: ``actor`` for the audit log and ``role``."""

    def __init__(self, actor: str, role: str) -> None:
        self.actor = actor
        self.role = role


def get_admin(
    request: Request,
    settings: SettingsDep,
    sessions: SessionsDep,
    engine: EngineDep,
    clock: ClockDep,
    authorization: Annotated[str | None, Header()] = None,
) -> Admin:
    """Bearer-token authentication; failures count against a per-client rate limit."""
    client = request.client.host if request.client else "unknown"
    key = f"admin-auth:{client}"
    now = clock()
    if crud.rate_count(engine, key, now) >= settings.admin_auth_failures_per_minute:
        raise HTTPException(
            status_code=429, detail="too many failed admin authentications; retry in a minute"
        )
    role: str | None = None
    actor = ""
    if authorization and authorization.startswith("Bearer "):
        token = authorization.removeprefix("Bearer ").strip()
        if settings.admin_token and hmac.compare_digest(token, settings.admin_token):
            role, actor = "admin", "admin:configured-token"
        else:
            with sessions() as session:
                role = crud.token_role(session, token)
            actor = f"token:{crud.token_sha256(token)[:12]}"
    if role is None:
        crud.rate_hit(engine, key, now)
        raise HTTPException(
            status_code=401,
            detail="missing or invalid bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if request.method not in ("GET", "HEAD") and role != "admin":
        raise HTTPException(status_code=403, detail="this token is read-only: admin role required")
    return Admin(actor, role)


AdminDep = Annotated[Admin, Depends(get_admin)]
