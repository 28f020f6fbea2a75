"""Applications and their key-encryption keys (admin)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from fastapi import APIRouter, HTTPException
from sqlalchemy.orm import Session

from sklicense import crud
from sklicense.api.deps import AdminDep, ClockDep, SessionDep
from sklicense.models import Application
from sklicense.schemas import (
    ApplicationCreate,
    ApplicationKekImport,
    ApplicationPublic,
    ApplicationPublicKeyImport,
    ApplicationUpdate,
)

admin_router = APIRouter(prefix="/applications", tags=["admin"])


def public(app: Application) -> ApplicationPublic:
    return ApplicationPublic(
        id=app.id,
        name=app.name,
        has_kek=app.kek is not None,
        models=app.models,
        public_key=app.public_key,
        created_at=app.created_at,
    )


def raise_http(error: crud.CrudError) -> HTTPException:
    return HTTPException(status_code=error.status, detail=str(error))


def changed(
    session: Session, name: str, change: Callable[[Application], object]
) -> ApplicationPublic:
    """Apply ``change`` to the application called ``name`` in one transaction."""
    try:
        with session.begin():
            app = crud.get_application(session, name)
            change(app)
    except crud.CrudError as e:
        raise raise_http(e) from None
    return public(app)


@admin_router.get("", response_model=list[ApplicationPublic])
def list_applications(admin: AdminDep, session: SessionDep) -> list[ApplicationPublic]:
    """List applications (the KEK itself is never returned)."""
    return [public(a) for a in crud.list_applications(session)]


@admin_router.post("", response_model=ApplicationPublic, status_code=201)
def create_application(
    payload: ApplicationCreate, admin: AdminDep, session: SessionDep
) -> ApplicationPublic:
    """Create an application, optionally with its base64 KEK."""
    try:
        with session.begin():
            kek = crud.decode_kek(payload.kek) if payload.kek is not None else None
            app = crud.create_application(
                session, payload.name, kek, admin.actor, payload.models, payload.public_key
            )
    except crud.CrudError as e:
        raise raise_http(e) from None
    return public(app)


@admin_router.put("/{name}/kek", response_model=ApplicationPublic)
def import_kek(
    name: str,
    payload: ApplicationKekImport,
    admin: AdminDep,
    session: SessionDep,
    clock: ClockDep,
) -> ApplicationPublic:
    """Import (or replace) the application's KEK (base64, from `skprotect export-kek`); the
    answer's ``warning`` says when it replaced another one (as ``sklicense app import-kek``
    does)."""
    warnings: list[str | None] = []

    def replace(app: Application) -> None:
        previous = app.kek
        crud.import_kek(session, app, crud.decode_kek(payload.kek), admin.actor)
        now = dt.datetime.fromtimestamp(clock(), dt.UTC)
        warnings.append(crud.kek_warning(session, app, previous, now))

    answer = changed(session, name, replace)
    return answer.model_copy(update={"warning": warnings[0]})


@admin_router.put("/{name}/public-key", response_model=ApplicationPublic)
def set_public_key(
    name: str, payload: ApplicationPublicKeyImport, admin: AdminDep, session: SessionDep
) -> ApplicationPublic:
    """Register (or replace) the key that signs the application's configuration files: from
    then on a licence request must carry a configuration it signed for the customer named."""
    return changed(
        session,
        name,
        lambda app: crud.set_public_key(session, app, payload.public_key, admin.actor),
    )


@admin_router.patch("/{name}", response_model=ApplicationPublic)
def update_application(
    name: str, payload: ApplicationUpdate, admin: AdminDep, session: SessionDep
) -> ApplicationPublic:
    """Replace the model names licences may name (``models: null``: any model)."""
    if "models" not in payload.model_fields_set:
        raise HTTPException(status_code=422, detail="nothing would change: give models")
    return changed(
        session, name, lambda app: crud.set_models(session, app, payload.models, admin.actor)
    )
