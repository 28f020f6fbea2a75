"""Customers and their policies (admin)."""

from __future__ import annotations

from fastapi import APIRouter

from sklicense import crud
from sklicense.api.deps import AdminDep, CustomerIdPath, SessionDep
from sklicense.api.routes.applications import raise_http
from sklicense.schemas import CustomerCreate, CustomerPublic, CustomerUpdate

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


@admin_router.patch("/{customer_id}", response_model=CustomerPublic)
def update_customer(
    customer_id: CustomerIdPath, payload: CustomerUpdate, admin: AdminDep, session: SessionDep
) -> CustomerPublic:
    """Change a customer's name, contract end, quota, maximum devices or default duration
    (fields sent as null are cleared)."""
    try:
        with session.begin():
            customer = crud.update_customer(
                session, customer_id, admin.actor, **payload.model_dump(exclude_unset=True)
            )
    except crud.CrudError as e:
        raise raise_http(e) from None
    return CustomerPublic.model_validate(customer)
