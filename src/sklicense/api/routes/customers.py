"""Customers and their policies (admin)."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter

from sklicense import crud
from sklicense.api.deps import AdminDep, ClockDep, CustomerIdPath, SessionDep
from sklicense.api.routes.applications import raise_http
from sklicense.schemas import CustomerCreate, CustomerPublic, CustomerUpdate, CustomerUpdated

admin_router = APIRouter(prefix="/customers", tags=["admin"])


@admin_router.get("", response_model=list[CustomerPublic])
def list_customers(admin: AdminDep, session: SessionDep) -> list[CustomerPublic]:
    """List customers with their policies and granted inferences."""
    return [CustomerPublic.model_validate(c) for c in crud.list_customers(session)]


@admin_router.get("/{customer_id}", response_model=CustomerPublic)
def get_customer(
    customer_id: CustomerIdPath, admin: AdminDep, session: SessionDep
) -> CustomerPublic:
    """One customer."""
    try:
        return CustomerPublic.model_validate(crud.get_customer(session, customer_id))
    except crud.CrudError as e:
        raise raise_http(e) from None


@admin_router.post("", response_model=CustomerPublic, status_code=201)
def create_customer(
    payload: CustomerCreate, admin: AdminDep, session: SessionDep
) -> CustomerPublic:
    """Create a customer (contract end and/or inference quota required)."""
    try:
        with session.begin():
            customer = crud.create_customer(session, admin.actor, **payload.model_dump())
    except crud.CrudError as e:
        raise raise_http(e) from None
    return CustomerPublic.model_validate(customer)


@admin_router.patch("/{customer_id}", response_model=CustomerUpdated)
def update_customer(
    customer_id: CustomerIdPath,
    payload: CustomerUpdate,
    admin: AdminDep,
    session: SessionDep,
    clock: ClockDep,
) -> CustomerUpdated:
    """Change a customer's name, contract end, quota, maximum devices or default duration
    (fields sent as null are cleared); ``warning`` says when licences issued without a quota
    stay unlimited after one is set."""
    changes = payload.model_dump(exclude_unset=True)
    try:
        with session.begin():
            customer = crud.update_customer(session, customer_id, admin.actor, **changes)
            now = dt.datetime.fromtimestamp(clock(), dt.UTC)
            warning = crud.quota_warning(session, customer, changes, now)
    except crud.CrudError as e:
        raise raise_http(e) from None
    return CustomerUpdated.model_validate(customer).model_copy(update={"warning": warning})
