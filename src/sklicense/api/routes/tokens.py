"""Admin API bearer tokens (admin role only): list them, revoke one."""

from __future__ import annotations

from fastapi import APIRouter

from sklicense import crud
from sklicense.api.deps import AdminRoleDep, SessionDep, TokenIdPath
from sklicense.api.routes.applications import raise_http
from sklicense.schemas import TokenPublic

admin_router = APIRouter(prefix="/tokens", tags=["admin"])


@admin_router.get("", response_model=list[TokenPublic])
def list_tokens(admin: AdminRoleDep, session: SessionDep) -> list[TokenPublic]:
    """List tokens: id, role, creation time and fingerprint (never the token)."""
    return [TokenPublic(**crud.token_row(t)) for t in crud.list_tokens(session)]


@admin_router.delete("/{token_id}", response_model=TokenPublic)
def revoke_token(token_id: TokenIdPath, admin: AdminRoleDep, session: SessionDep) -> TokenPublic:
    """Revoke a token: its next request gets 401."""
    try:
        with session.begin():
            row = crud.revoke_token(session, token_id, admin.actor)
    except crud.CrudError as e:
        raise raise_http(e) from None
    return TokenPublic(**crud.token_row(row))
