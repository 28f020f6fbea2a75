"""Annotated dependencies: settings, clock, database sessions, admin authentication."""

from __future__ import annotations

import datetime as dt
import hmac
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, HTTPException, Path, Query, Request, Response
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from sklicense import crud
from sklicense.schemas import DEVICE_ID_PATTERN, INT32_MAX, INT64_MAX, MAX_NAME
from sklicense.settings import Settings
from skruntime.licensing.protocol import SIGNATURE_HEADER, canonical_bytes

T = TypeVar("T")


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
DeviceIdPath = Annotated[str, Path(min_length=1, max_length=MAX_NAME, pattern=DEVICE_ID_PATTERN)]
"""A device id in a URL path: one a device could register (no NUL, which PostgreSQL cannot
bind: 422, not 500)."""
DeviceIdQuery = Annotated[
    str | None, Query(min_length=1, max_length=MAX_NAME, pattern=DEVICE_ID_PATTERN)
]
TokenIdPath = Annotated[int, Path(ge=0, le=INT32_MAX)]
MAX_PAGE = 1000
"""The most rows one answer of an admin list lists (and its default): the lists of devices,
licences and usage reports grow with the devices, and rows are never deleted."""
NEXT_OFFSET_HEADER = "X-Next-Offset"


@dataclass(frozen=True)
class Page:
    """The ``?limit=&offset=`` of an admin list."""

    limit: int
    offset: int

    def of(self, rows: Callable[[int, int], Sequence[T]], response: Response) -> Sequence[T]:
        """The page of ``rows(limit, offset)``; when more rows follow, the
        :data:`NEXT_OFFSET_HEADER` of ``response`` is the offset of the next page (one more row
        is read to know it)."""
        found = rows(self.limit + 1, self.offset)
        if len(found) > self.limit:
            response.headers[NEXT_OFFSET_HEADER] = str(self.offset + self.limit)
        return found[: self.limit]


def get_page(
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,  # larger: the database cannot bind
) -> Page:
    """The page an admin list answers: ``limit`` rows from ``offset``."""
    return Page(limit, offset)


PageDep = Annotated[Page, Depends(get_page)]
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
    :data:`~skruntime.licensing.protocol.MAX_DEVICE_BODY` bytes (413, from
    :class:`~sklicense.api.limits.BodyLimit` while the body arrives), and no NaN/Infinity,
    nesting beyond Python's recursion limit or lone surrogates in strings (400), each of which
    would otherwise fail later as a 500.
    """
    raw = await request.body()
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


READ_ONLY_DETAIL = "this token is read-only: admin role required"


def _authenticate(
    settings: Settings, sessions: sessionmaker[Session], authorization: str | None, now: int
) -> Admin | None:
    """The admin a bearer token names, or None; a stored token that expired at or before
    ``now`` is a 401 that says so. The scheme is case-insensitive (RFC 9110); the configured
    token is compared as bytes (``hmac.compare_digest`` refuses non-ASCII ``str``)."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    if settings.admin_token and hmac.compare_digest(token.encode(), settings.admin_token.encode()):
        return Admin("admin:configured-token", "admin")
    when = dt.datetime.fromtimestamp(now, dt.UTC)
    with sessions() as session:
        role = crud.token_role(session, token, when)
        expired = None if role is not None else crud.token_expired(session, token, when)
    if expired is not None:
        raise HTTPException(
            status_code=401,
            detail=f"the bearer token expired at {expired.isoformat()}: create a new one "
            "(sklicense token create) and revoke this one",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return None if role is None else Admin(f"token:{crud.token_fingerprint(token)}", role)


def get_admin(
    request: Request,
    settings: SettingsDep,
    sessions: SessionsDep,
    engine: EngineDep,
    clock: ClockDep,
    authorization: Annotated[str | None, Header()] = None,
) -> Admin:
    """Bearer-token authentication. The token is checked first: a valid one always passes, so
    bad tokens sent from an admin's address cannot lock the admin out. Failures count per
    client address; past ``admin_auth_failures_per_minute`` they get 429 instead of 401."""
    admin = _authenticate(settings, sessions, authorization, clock())
    if admin is None:
        client = request.client.host if request.client else "unknown"
        failures = crud.rate_hit(engine, f"admin-auth:{client}", clock())
        if failures > settings.admin_auth_failures_per_minute:
            raise HTTPException(
                status_code=429, detail="too many failed admin authentications; retry in a minute"
            )
        raise HTTPException(
            status_code=401,
            detail="missing or invalid bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if request.method not in ("GET", "HEAD") and admin.role != "admin":
        raise HTTPException(status_code=403, detail=READ_ONLY_DETAIL)
    return admin


AdminDep = Annotated[Admin, Depends(get_admin)]


def get_admin_role(admin: AdminDep) -> Admin:
    """An admin-role token, also for reads that read-only tokens may not make (the tokens)."""
    if admin.role != "admin":
        raise HTTPException(status_code=403, detail=READ_ONLY_DETAIL)
    return admin


AdminRoleDep = Annotated[Admin, Depends(get_admin_role)]
