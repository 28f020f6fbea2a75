"""The append-only audit log (admin, read)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from sklicense import crud
from sklicense.api.deps import MAX_PAGE, AdminDep, Page, SessionDep
from sklicense.schemas import INT64_MAX, AuditPublic

admin_router = APIRouter(prefix="/audit", tags=["admin"])


@admin_router.get("", response_model=list[AuditPublic])
def list_audit(
    admin: AdminDep,
    session: SessionDep,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,  # larger: the database cannot bind
) -> list[AuditPublic]:
    """Audit entries, newest first (a page, of 100 unless ``limit`` says otherwise)."""
    entries = Page(limit, offset).of(lambda n, skip: crud.list_audit(session, n, skip), response)
    return [AuditPublic.model_validate(e) for e in entries]
