"""The append-only audit log (admin, read)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from sklicense import crud
from sklicense.api.deps import AdminDep, SessionDep
from sklicense.schemas import INT64_MAX, AuditPublic

admin_router = APIRouter(prefix="/audit", tags=["admin"])


@admin_router.get("", response_model=list[AuditPublic])
def list_audit(
    admin: AdminDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,  # larger: the database cannot bind
) -> list[AuditPublic]:
    """Audit entries, newest first."""
    return [AuditPublic.model_validate(e) for e in crud.list_audit(session, limit, offset)]
