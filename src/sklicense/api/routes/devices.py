"""Devices (admin): list, revoke or reactivate, per-device licence duration override."""

from __future__ import annotations

from fastapi import APIRouter, Response

from sklicense import crud
from sklicense.api.deps import AdminDep, CustomerIdQuery, DeviceIdPath, PageDep, SessionDep
from sklicense.api.routes.applications import raise_http
from sklicense.schemas import DevicePublic, DeviceUpdate

admin_router = APIRouter(prefix="/devices", tags=["admin"])


@admin_router.get("", response_model=list[DevicePublic])
def list_devices(
    admin: AdminDep,
    session: SessionDep,
    page: PageDep,
    response: Response,
    customer_id: CustomerIdQuery = None,
) -> list[DevicePublic]:
    """List registered devices (optionally of one customer; a page)."""
    devices = page.of(lambda n, skip: crud.list_devices(session, customer_id, n, skip), response)
    return [DevicePublic.model_validate(d) for d in devices]


@admin_router.patch("/{device_id}", response_model=DevicePublic)
def update_device(
    device_id: DeviceIdPath, payload: DeviceUpdate, admin: AdminDep, session: SessionDep
) -> DevicePublic:
    """Revoke (``status: revoked``) or reactivate a device, or set its duration override."""
    try:
        with session.begin():
            device = crud.update_device(
                session, device_id, admin.actor, **payload.model_dump(exclude_unset=True)
            )
    except crud.CrudError as e:
        raise raise_http(e) from None
    return DevicePublic.model_validate(device)
