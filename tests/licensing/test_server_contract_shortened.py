"""A contract moved earlier: no licence answered afterwards outlives it.

A licence issued after the admin moves ``contract_end`` earlier already ended with the new
contract end, its allowance what remained of the quota. But the resend of a request granted
before the move (its answer lost, sent again with the same nonce) was answered with the old
licence, valid 29 days past the new contract end; now it is refused ``replayed_request`` and
the device's fresh request gets a licence ending with the contract. SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from tests.licensing.server_helpers import (
    T0,
    FakeDevice,
    bearer,
    make_application,
    make_customer,
)

DAY = 86400


def at(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def ask(client: Any, device: FakeDevice, body: dict[str, Any]) -> Any:
    return client.post("/v1/licences", json=body, headers=device.headers(body))


def test_no_licence_outlives_a_contract_moved_earlier(client, sessions, clock, tokens) -> None:
    make_application(sessions)
    make_customer(
        sessions,
        contract_end=at(T0 + 40 * DAY),
        inference_quota=1000,
        default_licence_seconds=30 * DAY,
    )
    device = FakeDevice("dev-1")
    first = device.licence_request(42, clock.now, requested_inferences=100)
    granted = ask(client, device, first).json()["licence"]
    assert (granted["expires_at"], granted["inferences"]) == (T0 + 30 * DAY, 100)

    # the contract now ends in 5 days, at 00:00 in UTC+02:00
    new_end = dt.datetime(2026, 6, 2, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert int(new_end.timestamp()) < T0 + 5 * DAY
    response = client.patch(
        "/v1/admin/customers/42",
        json={"contract_end": new_end.isoformat()},
        headers=bearer(tokens["admin"]),
    )
    assert response.status_code == 200, response.json()
    clock.now += 60

    resent = ask(client, device, first)  # before: 200, the licence ending on day 30
    assert resent.status_code == 403
    assert resent.json()["reason"] == "replayed_request"

    fresh = device.licence_request(42, clock.now, renews=granted["licence_id"])
    licence = ask(client, device, fresh).json()["licence"]
    assert licence["expires_at"] == int(new_end.timestamp())
    assert licence["inferences"] == 900  # what remains of the quota, not more
    customer = client.get("/v1/admin/customers/42", headers=bearer(tokens["admin"])).json()
    assert customer["inferences_granted"] == 1000

    other = FakeDevice("dev-2")
    body = other.licence_request(42, clock.now)
    denied = ask(client, other, body).json()
    assert denied["reason"] == "quota_exhausted"
