"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

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


def create_app(settings: Settings | None = None, clock: Callable[[], int] | None = None) -> FastAPI:
    """Build the app; refuses an unmigrated database, a missing key or default secrets."""
    settings = settings or Settings.from_env()
    settings.check_production()
    db.check_migrated(settings.database_url)
    app = FastAPI(title="sklicense", summary="skprotect licence server", version="1")
    app.add_middleware(BodyLimit)
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
