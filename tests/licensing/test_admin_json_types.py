"""Admin API integers are JSON integers and contract ends ISO 8601 text: ``true`` was taken as
1 (``"inference_quota": true`` set a quota of 1, ``"id": true`` created customer 1), ``"5"``
and ``5.0`` as 5, and a number as a contract end in Unix seconds (a year, ``2030``, became
1970-01-01T00:33:50Z), a number in text (``"2030"``) too. SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from tests.licensing.server_helpers import FakeDevice, bearer, make_application, make_customer

from sklicense.models import Customer

VALID = {"id": 7, "name": "Acme", "inference_quota": 5}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", True),
        ("id", "7"),
        ("inference_quota", True),
        ("inference_quota", "5"),
        ("inference_quota", 5.0),
        ("max_devices", True),
        ("default_licence_seconds", 86400.0),
    ],
)
def test_customer_integers_of_another_json_type_are_422(
    client: Any, tokens: Any, sessions: Any, field: str, value: Any
) -> None:
    response = client.post(
        "/v1/admin/customers", json=VALID | {field: value}, headers=bearer(tokens["admin"])
    )
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert (error["loc"], error["msg"]) == (["body", field], "Input should be a valid integer")
    with sessions() as session:
        assert session.scalars(select(Customer)).all() == []


def test_a_quota_of_true_is_not_set(client: Any, tokens: Any, sessions: Any) -> None:
    make_customer(sessions, inference_quota=1000)
    response = client.patch(
        "/v1/admin/customers/42", json={"inference_quota": True}, headers=bearer(tokens["admin"])
    )
    assert response.status_code == 422
    with sessions() as session:
        assert session.get(Customer, 42).inference_quota == 1000


@pytest.mark.parametrize("value", [2030, 1_900_000_000, 1.5e12, True, "2030", "1.9e9"])
def test_a_contract_end_must_be_iso_text(
    client: Any, tokens: Any, sessions: Any, value: Any
) -> None:
    admin = bearer(tokens["admin"])
    created = client.post(
        "/v1/admin/customers", json=VALID | {"contract_end": value}, headers=admin
    )
    make_customer(sessions)
    edited = client.patch("/v1/admin/customers/42", json={"contract_end": value}, headers=admin)
    message = (
        'Value error, must be ISO 8601 text with a timezone (e.g. "2026-06-30T00:00:00Z"), but '
        f"got {value!r}"
    )
    for response in (created, edited):
        assert response.status_code == 422
        (error,) = response.json()["detail"]
        assert (error["loc"], error["msg"]) == (["body", "contract_end"], message)
    with sessions() as session:
        assert session.get(Customer, 7) is None
        assert session.get(Customer, 42).contract_end is None


def test_iso_contract_ends_and_null_are_still_taken(
    client: Any, tokens: Any, sessions: Any
) -> None:
    admin = bearer(tokens["admin"])
    end = "2030-06-30T00:00:00+02:00"
    created = client.post("/v1/admin/customers", json=VALID | {"contract_end": end}, headers=admin)
    assert created.status_code == 201
    listed = client.get("/v1/admin/customers/7", headers=admin).json()
    assert listed["contract_end"] == "2030-06-29T22:00:00Z"
    cleared = client.patch("/v1/admin/customers/7", json={"contract_end": None}, headers=admin)
    assert cleared.json()["contract_end"] is None


def test_a_duration_override_of_true_is_422(
    client: Any, tokens: Any, sessions: Any, clock: Any
) -> None:
    make_application(sessions)
    make_customer(sessions)
    device = FakeDevice("dev-1")
    body = device.licence_request(42, clock.now)
    assert client.post("/v1/licences", json=body, headers=device.headers(body)).is_success
    response = client.patch(
        "/v1/admin/devices/dev-1",
        json={"duration_override_seconds": True},
        headers=bearer(tokens["admin"]),
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "duration_override_seconds"]
