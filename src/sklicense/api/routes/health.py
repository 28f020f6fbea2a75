"""Health and the server's public key (which the runtime pins)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from sklicense import db
from sklicense.api.database_errors import MOVED, RETRY_AFTER_S
from sklicense.api.deps import SessionDep
from sklicense.crypto import public_key_b64

logger = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/health", response_model=None)
def health(session: SessionDep) -> dict[str, str] | JSONResponse:
    """Liveness and database reachability. A SQLite file moved or deleted while the server
    runs is unavailable, though the connections that opened it still read it (``SELECT 1``
    answered ok while every write failed)."""
    session.execute(text("SELECT 1"))
    path = db.engine_file(session.get_bind().engine)
    if path is not None and not path.is_file():
        logger.error("GET /v1/health: the database file %s is gone", path)
        return JSONResponse(
            status_code=503, content={"detail": MOVED}, headers={"Retry-After": str(RETRY_AFTER_S)}
        )
    return {"status": "ok"}


@router.get("/public-key")
def public_key(request: Request) -> dict[str, str]:
    """The server's Ed25519 public key (base64 raw), which signs every licence."""
    return {"algorithm": "Ed25519", "public_key": public_key_b64(request.app.state.signing_key)}
