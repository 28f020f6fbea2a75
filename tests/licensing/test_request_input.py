"""Device requests (``POST /v1/licences``, ``POST /v1/usage``) with input a demanding device or
an attacker sends: bounded 422 answers, ids PostgreSQL cannot store, integers that are not JSON
integers (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select
from tests.licensing.server_helpers import T0, FakeDevice, make_application, make_customer

from sklicense.api.routes.licences import MAX_ERRORS_SHOWN
from sklicense.models import UsageReport


@pytest.fixture
def setup(sessions: Any) -> Any:
    make_application(sessions)
    make_customer(sessions)
    return sessions


def post(client: Any, path: str, device: FakeDevice, body: dict[str, Any]) -> Any:
    return client.post(path, json=body, headers=device.headers(body))


def licence_id(client: Any, device: FakeDevice, now: int) -> str:
    body = device.licence_request(42, now, requested_inferences=10)
    response = post(client, "/v1/licences", device, body)
    assert response.status_code == 200, response.text
    return response.json()["licence"]["licence_id"]


@pytest.mark.parametrize("path", ["/v1/licences", "/v1/usage"])
def test_a_422_lists_a_bounded_number_of_errors(client, path: str) -> None:
    """Thousands of unknown keys: the answer lists the first errors and counts the others,
    instead of one error per key (an answer 8 times the request)."""
    raw = json.dumps({f"k{i}": 0 for i in range(5000)}, separators=(",", ":")).encode()
    response = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    answer = response.json()
    assert len(answer["detail"]) == MAX_ERRORS_SHOWN
    assert answer["detail"][0] == {
        "type": "missing",
        "loc": ["device_id"],
        "msg": "Field required",
    }
    fields = 9 if path == "/v1/licences" else 6  # the required fields, each missing
    assert answer["errors_not_shown"] == 5000 + fields - MAX_ERRORS_SHOWN
    assert len(response.content) < 2000


def test_a_422_with_few_errors_lists_them_all(client) -> None:
    response = client.post("/v1/usage", json={"device_id": "dev-1"})
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [
        ["timestamp"],
        ["nonce"],
        ["licence_id"],
        ["report_id"],
        ["counter"],
    ]
    assert "errors_not_shown" not in response.json()


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [
        ("report_id", "r\x00", r"'\x00'"),
        ("report_id", "r\n1", r"'\n'"),
        ("licence_id", "\x00", r"'\x00'"),
    ],
)
def test_usage_ids_with_control_characters_are_422(
    client, setup, clock, field: str, value: str, shown: str
) -> None:
    """A NUL in a report or licence id was a 500 on PostgreSQL (stored as given on SQLite)."""
    device = FakeDevice("dev-1")
    report = device.usage_report(licence_id(client, device, clock.now), "r1", 1, clock.now)
    report[field] = value if field == "report_id" else report[field][:-1] + value
    response = post(client, "/v1/usage", device, report)
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == [
        {
            "type": "value_error",
            "loc": [field],
            "msg": f"Value error, must not contain control characters, but got {shown}",
        }
    ]
    with setup() as session:
        assert session.scalar(select(func.count()).select_from(UsageReport)) == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("customer_id", True),  # was read as customer 1
        ("customer_id", "42"),
        ("customer_id", 42.0),
        ("timestamp", str(T0)),
        ("requested_inferences", True),
    ],
)
def test_licence_request_integers_are_json_integers(
    client, setup, clock, field: str, value: Any
) -> None:
    device = FakeDevice("dev-1")
    body = device.licence_request(42, clock.now) | {field: value}
    response = post(client, "/v1/licences", device, body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == [
        {"type": "int_type", "loc": [field], "msg": "Input should be a valid integer"}
    ]


def test_a_usage_counter_is_a_json_integer(client, setup, clock) -> None:
    """``"counter": true`` was a report of 1 inference."""
    device = FakeDevice("dev-1")
    report = device.usage_report(licence_id(client, device, clock.now), "r1", 1, clock.now)
    response = post(client, "/v1/usage", device, report | {"counter": True})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["counter"]


def test_a_licence_request_for_no_model_is_422(client, setup, clock, sessions) -> None:
    """``"models": []`` was granted a licence that runs nothing: its allowance drawn from the
    quota, the device registered in one of the customer's slots."""
    from sklicense.models import Customer, Device

    device = FakeDevice("dev-1")
    body = device.licence_request(42, clock.now, models=[], requested_inferences=100)
    response = post(client, "/v1/licences", device, body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["models"]
    with sessions() as session:
        assert session.get(Customer, 42).inferences_granted == 0
        assert session.get(Device, "dev-1") is None


def test_a_nonce_with_a_trailing_newline_is_422(client, setup, clock, sessions) -> None:
    """``NONCE_RE.match`` let ``"$"`` accept a 33rd character, a line break, until 2026-12-07."""
    from sklicense.models import Device

    device = FakeDevice("dev-1")
    body = device.licence_request(42, clock.now, requested_inferences=10)
    body["nonce"] = "a" * 32 + "\n"
    response = post(client, "/v1/licences", device, body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["nonce"]
    with sessions() as session:
        assert session.get(Device, "dev-1") is None
