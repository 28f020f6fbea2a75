"""POST /v1/usage: signed, idempotent per report id, monotonic counters."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.licensing.server_helpers import FakeDevice, bearer, make_application, make_customer


@pytest.fixture
def licensed(client, sessions, clock) -> tuple[FakeDevice, str]:
    make_application(sessions)
    make_customer(sessions, inference_quota=100)
    device = FakeDevice("dev-1")
    body = device.licence_request(42, clock.now)
    response = client.post("/v1/licences", json=body, headers=device.headers(body))
    return device, response.json()["licence"]["licence_id"]


def report(client: Any, device: FakeDevice, body: dict[str, Any], key: Any = None) -> Any:
    return client.post("/v1/usage", json=body, headers=device.headers(body, key))


def test_usage_idempotent_and_listed(client, licensed, clock, tokens) -> None:
    device, licence_id = licensed
    first = report(client, device, device.usage_report(licence_id, "r1", 5, clock.now))
    assert first.json() == {
        "accepted": True,
        "duplicate": False,
        "report_id": "r1",
        "licence_id": licence_id,
        "counter": 5,
    }
    again = report(client, device, device.usage_report(licence_id, "r1", 5, clock.now))
    assert again.status_code == 200 and again.json()["duplicate"] is True
    report(client, device, device.usage_report(licence_id, "r2", 9, clock.now))
    rows = client.get("/v1/admin/usage?customer_id=42", headers=bearer(tokens["read-only"]))
    assert [(r["report_id"], r["counter"]) for r in rows.json()] == [("r1", 5), ("r2", 9)]
    summary = client.get("/v1/admin/usage/summary", headers=bearer(tokens["admin"])).json()
    assert summary == [
        {
            "customer_id": 42,
            "device_id": "dev-1",
            "licence_id": licence_id,
            "counter": 9,
            "allowance": 100,
            "over_allowance": False,
        }
    ]


def test_a_counter_past_the_allowance_is_flagged(client, licensed, clock, tokens) -> None:
    """Only a modified runtime counts past its licence's allowance (clones of a state folder
    each stop at it): the report is kept (the count is what the device says it ran) and
    flagged for the vendor."""
    device, licence_id = licensed
    assert report(client, device, device.usage_report(licence_id, "r1", 100, clock.now)).is_success
    response = report(client, device, device.usage_report(licence_id, "r2", 1_000_000, clock.now))
    assert response.status_code == 200
    admin = bearer(tokens["admin"])
    (row,) = client.get("/v1/admin/usage/summary", headers=admin).json()
    assert (row["counter"], row["allowance"], row["over_allowance"]) == (1_000_000, 100, True)
    actions = [e["action"] for e in client.get("/v1/admin/audit", headers=admin).json()]
    assert actions.count("usage.over_allowance") == 1 and actions.count("usage.report") == 1


def test_usage_counter_is_monotonic(client, licensed, clock) -> None:
    device, licence_id = licensed
    report(client, device, device.usage_report(licence_id, "r1", 5, clock.now))
    response = report(client, device, device.usage_report(licence_id, "r2", 4, clock.now))
    assert response.status_code == 409
    assert response.json() == {
        "decision": "deny",
        "reason": "counter_behind",
        "detail": f"counter 4 is lower than the 5 already reported for licence {licence_id}: "
        "counters are monotonic",
    }


def test_usage_denials(client, licensed, clock) -> None:
    device, licence_id = licensed
    body = device.usage_report(licence_id, "r1", 1, clock.now)
    bad = report(client, device, body, Ed25519PrivateKey.generate())
    assert bad.json() == {
        "decision": "deny",
        "reason": "bad_signature",
        "detail": "the request signature does not verify with the device's registered key",
    }
    assert report(client, device, body).status_code == 200
    replay = report(client, device, body)
    assert replay.json()["reason"] == "replayed_request"
    stranger = FakeDevice("dev-x")
    unknown = report(client, stranger, stranger.usage_report(licence_id, "r", 1, clock.now))
    assert unknown.json()["detail"] == "device dev-x is not registered"
    other = report(client, device, device.usage_report("nope", "r9", 1, clock.now))
    assert (other.status_code, other.json()) == (
        404,
        {
            "decision": "deny",
            "reason": "unknown_licence",
            "detail": "licence nope is not a licence of device dev-1",
        },
    )
