"""Health and the server's public key (which the runtime pins)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import text

from sklicense.api.deps import SessionDep
from sklicense.crypto import public_key_b64

router = APIRouter(tags=["health"])


@router.get("/health")
def health(session: SessionDep) -> dict[str, str]:
    """Liveness and database reachability."""
    session.execute(text("SELECT 1"))
    return {"status": "ok"}


@router.get("/public-key")
def public_key(request: Request) -> dict[str, str]:
    """The server's Ed25519 public key (base64 raw), which signs every licence."""
    return {"algorithm": "Ed25519", "public_key": public_key_b64(request.app.state.signing_key)}
