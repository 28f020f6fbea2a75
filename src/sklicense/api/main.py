"""The FastAPI application factory."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from sklicense import db
from sklicense.api.limits import BodyLimit
from sklicense.api.routes import (
    applications,
    audit,
    customers,
    devices,
    health,
    licences,
    tokens,
    usage,
)
from sklicense.crypto import load_signing_key
from sklicense.settings import Settings
from skruntime.licensing.protocol import now as unix_now

logger = logging.getLogger(__name__)

DATABASE_RETRY_AFTER_S = 10
"""The ``Retry-After`` of a request answered 503 because the database failed it."""


def database_unavailable(request: Request, error: Exception) -> JSONResponse:
    """503 with ``Retry-After`` for a request the database failed (unreachable, dropped
    connection, locked past the busy timeout, a deadlock), instead of a bare 500 "Internal
    Server Error" that neither a load balancer's health check nor an admin can act on. The
    reason is logged, not answered: anyone can send a device request."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()  # none for a driver error without a message
    reason = lines[0] if lines else f"{type(cause).__name__} (no message)"
    logger.error(
        "%s %s failed, the database is unavailable: %s", request.method, request.url.path, reason
    )
    return JSONResponse(
        status_code=503,
        content={
            "detail": "the licence database is unavailable (the server log says why): retry later"
        },
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )


def create_app(settings: Settings | None = None, clock: Callable[[], int] | None = None) -> FastAPI:
    """Build the app; refuses an unmigrated database, a missing key or default secrets."""
    settings = settings or Settings.from_env()
    settings.check_production()
    db.check_migrated(settings.database_url)
    app = FastAPI(title="sklicense", summary="skprotect licence server", version="1")
    app.add_middleware(BodyLimit)
    app.add_exception_handler(OperationalError, database_unavailable)
    app.state.settings = settings
    app.state.clock = clock or unix_now
    app.state.engine = db.get_engine(settings.database_url)
    app.state.sessions = db.session_factory(settings.database_url)
    app.state.signing_key = load_signing_key(settings.key_path)
    for module in (health, licences, usage):
        app.include_router(module.router, prefix="/v1")
    for module in (applications, customers, devices, licences, usage, audit, tokens):
        app.include_router(module.admin_router, prefix="/v1/admin")
    return app
