"""POST /v1/licences verifies a request's Ed25519 signature once: before the transaction, and
again inside it only when the device's key changed in between (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import func, select
from tests.licensing.server_helpers import T0, FakeDevice, make_application, make_customer

from sklicense import decision, service
from sklicense.models import AuditLog, Device, Licence

REFUSED = {
    "decision": "deny",
    "reason": "bad_signature",
    "detail": "the request signature does not verify with the device's registered key",
}


@pytest.fixture
def setup(sessions: Any) -> Any:
    make_application(sessions)
    make_customer(sessions)
    return sessions


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The device ids of the request bodies whose signature the server verifies, in order."""
    seen: list[str] = []
    real = decision.verify

    def counted(body: Any, signature: str, key: Any) -> bool:
        seen.append(body["device_id"])
        return real(body, signature, key)

    monkeypatch.setattr(decision, "verify", counted)
    return seen


def ask(client: Any, device: FakeDevice, body: dict[str, Any]) -> Any:
    """Send ``body`` signed by ``device`` (each licence takes 10 of the 1,000 inferences)."""
    body["requested_inferences"] = 10
    return client.post("/v1/licences", json=body, headers=device.headers(body))


def between_steps(monkeypatch: pytest.MonkeyPatch, change: Any) -> None:
    """Run ``change()`` after the signature is checked and before the transaction starts."""
    real = service.signed_by_device

    def then_change(*args: Any) -> tuple[bytes | None, bool]:
        result = real(*args)
        change()
        return result

    monkeypatch.setattr(service, "signed_by_device", then_change)


def test_a_signed_request_is_verified_once(client, setup, clock, verifications) -> None:
    """A new device's first request and a known device's renewal: one verification each."""
    device = FakeDevice("dev-1")
    assert ask(client, device, device.licence_request(42, clock.now)).status_code == 200
    assert verifications == ["dev-1"]
    clock.now += 60
    assert ask(client, device, device.licence_request(42, clock.now)).status_code == 200
    assert verifications == ["dev-1", "dev-1"]


def test_a_device_given_another_key_in_between_is_refused(
    client, setup, clock, verifications, monkeypatch
) -> None:
    """The device is registered with another key after its signature was checked: the request
    is verified again against that key, and refused (unaudited, no licence)."""
    device = FakeDevice("dev-1")
    assert ask(client, device, device.licence_request(42, clock.now)).status_code == 200
    impostor = FakeDevice("dev-1")

    def rekey() -> None:
        with setup.begin() as session:
            session.get(Device, "dev-1").signing_public_key = impostor.signing_public

    between_steps(monkeypatch, rekey)
    response = ask(client, device, device.licence_request(42, clock.now + 60))
    assert (response.status_code, response.json()) == (403, REFUSED)
    assert verifications == ["dev-1", "dev-1", "dev-1"]
    with setup() as session:
        assert session.scalar(select(func.count()).select_from(Licence)) == 1
        assert (
            session.scalar(
                select(func.count()).select_from(AuditLog).where(AuditLog.action == "licence.deny")
            )
            == 0
        )


def test_a_new_device_registered_by_another_in_between_is_refused(
    client, setup, clock, verifications, monkeypatch
) -> None:
    """A new device's request verified with its own key, while another key registers the same
    device id before the transaction: refused, not licensed under the other registration."""
    device, impostor = FakeDevice("dev-1"), FakeDevice("dev-1")

    def register_impostor() -> None:
        with setup.begin() as session:
            session.add(
                Device(
                    id="dev-1",
                    customer_id=42,
                    signing_public_key=impostor.signing_public,
                    exchange_public_key=impostor.exchange_public,
                    status="active",
                    created_at=dt.datetime.fromtimestamp(T0, dt.UTC),
                )
            )

    between_steps(monkeypatch, register_impostor)
    response = ask(client, device, device.licence_request(42, clock.now))
    assert (response.status_code, response.json()) == (403, REFUSED)
    assert verifications == ["dev-1", "dev-1"]
    with setup() as session:
        assert session.scalar(select(func.count()).select_from(Licence)) == 0
