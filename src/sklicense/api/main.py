"""The FastAPI application factory."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from sklicense import db
from sklicense.api import database_errors
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


def _reason(error: SQLAlchemyError) -> str:
    """The first line of the driver's message (what the log shows)."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()  # none for a driver error without a message
    return lines[0] if lines else f"{type(cause).__name__} (no message)"


def database_failed(request: Request, error: Exception) -> JSONResponse:
    """The handler of a request the database failed (:func:`database_errors.classify`): a
    transient failure (unreachable, dropped connection, locked past the busy timeout, no pooled
    connection free in time, a deadlock) is 503 with ``Retry-After``, which a load balancer or
    a device acts on; a permanent one (not migrated, read-only, not a database) a 500 whose
    detail says what to do, since a retry never succeeds. Not a bare 500 "Internal Server
    Error". The reason is logged, not answered: anyone can send a device request. Another
    error (a constraint violated: a bug) is raised again, to the server's handler of errors."""
    assert isinstance(error, SQLAlchemyError)
    failure = database_errors.classify(error)
    if failure is None:
        raise error
    where = f"{request.method} {request.url.path} failed"
    if failure.status == 503:
        logger.error("%s, the database is unavailable: %s", where, _reason(error))
        return JSONResponse(
            status_code=503,
            content={"detail": failure.detail},
            headers={"Retry-After": str(database_errors.RETRY_AFTER_S)},
        )
    logger.error("%s, the database needs an administrator: %s", where, _reason(error))
    return JSONResponse(status_code=failure.status, content={"detail": failure.detail})


NOT_JSON_DETAIL = (
    "the request body must be JSON: NaN, Infinity and unpaired surrogate escapes (\\ud800 to "
    "\\udfff) are not JSON text; send numbers and text that JSON can hold"
)
NOT_UTF8_DETAIL = "the request body must be JSON in UTF-8, sent with Content-Type: application/json"


async def request_invalid(request: Request, error: Exception) -> Response:
    """FastAPI's 422 of a request its parameters or body do not fit, which echoes each invalid
    value; or a 400 when that echo cannot be JSON: a body with NaN, Infinity or an unpaired
    surrogate escape (``"\\ud800"``, in a value or a key), which Python's parser accepts, or
    the raw body of another ``Content-Type`` that is not UTF-8. FastAPI's own handler fails to
    encode those: a 500 "Internal Server Error"."""
    assert isinstance(error, RequestValidationError)
    try:
        return await request_validation_exception_handler(request, error)
    except UnicodeDecodeError:  # the raw bytes of another Content-Type
        detail = NOT_UTF8_DETAIL
    except ValueError:  # "Out of range float values", or a UnicodeEncodeError
        detail = NOT_JSON_DETAIL
    return JSONResponse(status_code=400, content={"detail": detail})


NEVER_DELETED = {
    "customers": "set its contract end to retire it (PATCH /v1/admin/customers/{id} with "
    '{"contract_end": DATE}; sklicense customer edit --id ID --contract-end DATE) and revoke '
    "its devices",
    "devices": 'revoke it (PATCH /v1/admin/devices/{id} with {"status": "revoked"}; sklicense '
    "device revoke ID); a revoked device keeps its slot under max_devices",
    "applications": "set its model list to a name no configuration uses (PATCH "
    '/v1/admin/applications/{name} with {"models": [...]}; sklicense app set-models)',
}
"""What to do instead of deleting a row of each admin collection: the audit log, licences and
usage reports refer to them, so they are never deleted."""


async def http_error(request: Request, error: Exception) -> Response:
    """Starlette's answer to an HTTP error, but a ``DELETE`` of a customer, device or
    application, which are never deleted, says so and what to do instead, not only "Method
    Not Allowed"."""
    assert isinstance(error, StarletteHTTPException)
    parts = request.url.path.strip("/").split("/")
    if (
        error.status_code == 405
        and request.method == "DELETE"
        and len(parts) == 4
        and parts[:2] == ["v1", "admin"]
        and parts[2] in NEVER_DELETED
    ):
        what = parts[2].removesuffix("s")
        article = "an" if what[0] in "aeiou" else "a"  # "an application"
        return JSONResponse(
            status_code=405,
            content={
                "detail": f"{article} {what} is never deleted (the audit log, licences and usage "
                f"reports refer to it): {NEVER_DELETED[parts[2]]}"
            },
            headers=error.headers,
        )
    return await http_exception_handler(request, error)


def create_app(settings: Settings | None = None, clock: Callable[[], int] | None = None) -> FastAPI:
    """Build the app; refuses an unmigrated database, a missing key or default secrets."""
    settings = settings or Settings.from_env()
    settings.check_production()
    db.check_migrated(settings.database_url)
    app = FastAPI(title="sklicense", summary="skprotect licence server", version="1")
    app.add_middleware(BodyLimit)
    app.add_exception_handler(RequestValidationError, request_invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(DBAPIError, database_failed)
    app.add_exception_handler(PoolTimeoutError, database_failed)
    app.state.settings = settings
    app.state.clock = clock or unix_now
    timeout = settings.database_pool_timeout_s
    app.state.engine = db.get_engine(settings.database_url, timeout)
    app.state.sessions = db.session_factory(settings.database_url, timeout)
    app.state.signing_key = load_signing_key(settings.key_path)
    for module in (health, licences, usage):
        app.include_router(module.router, prefix="/v1")
    for module in (applications, customers, devices, licences, usage, audit, tokens):
        app.include_router(module.admin_router, prefix="/v1/admin")
    return app
