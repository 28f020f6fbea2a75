"""Customers and their policies (admin)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from sklicense import crud
from sklicense.api.deps import AdminDep, ClockDep, CustomerIdPath, PageDep, SessionDep
from sklicense.api.routes.applications import raise_http
from sklicense.models import Customer
from sklicense.schemas import CustomerCreate, CustomerPublic, CustomerUpdate, CustomerUpdated

admin_router = APIRouter(prefix="/customers", tags=["admin"])


@admin_router.get("", response_model=list[CustomerPublic])
def list_customers(
    admin: AdminDep, session: SessionDep, page: PageDep, response: Response
) -> list[CustomerPublic]:
    """List customers with their policies and granted inferences (a page)."""
    customers = page.of(lambda n, skip: crud.list_customers(session, n, skip), response)
    return [CustomerPublic.model_validate(c) for c in customers]


@admin_router.get("/{customer_id}", response_model=CustomerPublic)
def get_customer(
    customer_id: CustomerIdPath, admin: AdminDep, session: SessionDep
) -> CustomerPublic:
    """One customer."""
    try:
        return CustomerPublic.model_validate(crud.get_customer(session, customer_id))
    except crud.CrudError as e:
        raise raise_http(e) from None


@admin_router.post("", response_model=CustomerUpdated, status_code=201)
def create_customer(
    payload: CustomerCreate, admin: AdminDep, session: SessionDep, clock: ClockDep
) -> CustomerUpdated:
    """Create a customer (contract end and/or inference quota required); ``warning`` says
    when its contract end is not in the future (every licence request is denied)."""
    fields = payload.model_dump()
    try:
        with session.begin():
            customer = crud.create_customer(session, admin.actor, **fields)
            warning = _warning(session, customer, fields, clock)
    except crud.CrudError as e:
        raise raise_http(e) from None
    return CustomerUpdated.model_validate(customer).model_copy(update={"warning": warning})


@admin_router.patch("/{customer_id}", response_model=CustomerUpdated)
def update_customer(
    customer_id: CustomerIdPath,
    payload: CustomerUpdate,
    admin: AdminDep,
    session: SessionDep,
    clock: ClockDep,
) -> CustomerUpdated:
    """Change a customer's name, contract end, quota, maximum devices or default duration
    (fields sent as null are cleared); ``warning`` says when the contract end set is not in
    the future, or licences issued without a quota stay unlimited after one is set."""
    changes = payload.model_dump(exclude_unset=True)
    try:
        with session.begin():
            customer = crud.update_customer(session, customer_id, admin.actor, **changes)
            warning = _warning(session, customer, changes, clock)
    except crud.CrudError as e:
        raise raise_http(e) from None
    return CustomerUpdated.model_validate(customer).model_copy(update={"warning": warning})


def _warning(
    session: Session, customer: Customer, changes: dict[str, Any], clock: Callable[[], int]
) -> str | None:
    """:func:`crud.customer_warning` at the server's time, with the API's way to fix a date."""
    now = dt.datetime.fromtimestamp(clock(), dt.UTC)
    fix = f'PATCH /v1/admin/customers/{customer.id} with {{"contract_end": DATE}}'
    return crud.customer_warning(session, customer, changes, now, fix)
