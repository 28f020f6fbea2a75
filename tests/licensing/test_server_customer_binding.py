"""Who may be licensed: the customer a device names must be proven by a configuration the
application's vendor signed; revoked devices keep their slot; unsigned requests do not spend
another device's rate limit; unusable exchange keys are refused. SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from tests.licensing.server_helpers import (
    APP,
    T0,
    FakeDevice,
    bearer,
    make_customer,
    random_kek,
)
from typer.testing import CliRunner

from sklicense import crud
from sklicense.cli import app as cli
from sklicense.models import Application, Customer
from skruntime.config import public_key_bytes
from skruntime.licensing.protocol import sign

DAY = 86400
YEAR_END = dt.datetime.fromtimestamp(T0 + 365 * DAY, dt.UTC)


def b64_public(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(public_key_bytes(key)).decode("ascii")


def signed_configuration(
    vendor: Ed25519PrivateKey, customer_id: int, application: str = APP, models=("model-a",)
) -> dict[str, Any]:
    """What a device sends: the configuration's signed payload, as the protector signs it."""
    payload = {
        "platform_version": 2,
        "platform": "LINUX",
        "application": application,
        "models": {name: {"key_epoch": 0} for name in models},
        "customer": {"id": customer_id, "name": f"customer {customer_id}"},
    }
    return {"payload": payload, "signature": sign(payload, vendor)}


@pytest.fixture
def vendor() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def bound(sessions: Any, vendor: Ed25519PrivateKey) -> Any:
    """An application with its KEK and public key; customers 7 and 8 with quotas of 100."""
    with sessions.begin() as session:
        crud.create_application(session, APP, random_kek(), "test", public_key=b64_public(vendor))
    for customer_id in (7, 8):
        make_customer(sessions, id=customer_id, inference_quota=100, contract_end=YEAR_END)
    return sessions


def ask(client: Any, device: FakeDevice, customer_id: int, configuration: Any, **fields: Any):
    body = device.licence_request(customer_id, T0, requested_inferences=10, **fields)
    if configuration is not None:
        body["configuration"] = configuration
    return client.post("/v1/licences", json=body, headers=device.headers(body))


def granted(sessions: Any) -> dict[int, int]:
    with sessions() as session:
        return {c.id: c.inferences_granted for c in session.scalars(select(Customer))}


def test_a_configuration_signed_for_the_customer_is_licensed(client, bound, vendor) -> None:
    response = ask(client, FakeDevice(), 7, signed_configuration(vendor, 7))
    assert response.status_code == 200, response.json()
    assert response.json()["licence"]["customer_id"] == 7
    assert response.json()["licence"]["wrapped_kek"] is not None
    assert granted(bound) == {7: 10, 8: 0}


@pytest.mark.parametrize(
    ("customer_id", "make", "detail"),
    [
        (
            8,
            lambda vendor: signed_configuration(vendor, 7),
            "the configuration is licensed to customer 7, not customer 8",
        ),
        (  # the thief's own edit of the file: customer 8, re-signed with its own key
            8,
            lambda vendor: signed_configuration(Ed25519PrivateKey.generate(), 8),
            "the configuration is not signed by the registered key of application 'demo-app': "
            "it was modified, or is another application's",
        ),
        (
            7,
            lambda vendor: {**signed_configuration(vendor, 7), "payload": {"customer": {"id": 7}}},
            "the configuration is not signed by the registered key of application 'demo-app': "
            "it was modified, or is another application's",
        ),
        (
            7,
            lambda vendor: signed_configuration(vendor, 7, application="other-app"),
            "the configuration is of application 'other-app', not 'demo-app'",
        ),
        (
            7,
            lambda vendor: signed_configuration(vendor, 7, models=("model-b",)),
            "the configuration has no model named 'model-a'",
        ),
        (
            7,
            lambda vendor: None,
            "application 'demo-app' requires the signed configuration in licence requests: "
            "update skruntime on the device",
        ),
    ],
    ids=["other-customer", "re-signed", "edited", "other-app", "other-model", "absent"],
)
def test_a_customer_not_proven_by_the_vendor_is_denied(
    client, bound, vendor, customer_id, make, detail
) -> None:
    response = ask(client, FakeDevice(), customer_id, make(vendor))
    assert response.status_code == 403
    assert response.json() == {
        "decision": "deny",
        "reason": "customer_not_proven",
        "detail": detail,
    }
    assert granted(bound) == {7: 0, 8: 0}  # nothing charged to anyone


def test_without_a_registered_key_the_customer_is_taken_on_trust(client, sessions) -> None:
    """The behaviour the warning of `sklicense app create` names."""
    with sessions.begin() as session:
        crud.create_application(session, APP, None, "test")
    make_customer(sessions, id=8, inference_quota=100, contract_end=YEAR_END)
    response = ask(client, FakeDevice(), 8, None)
    assert response.status_code == 200, response.json()


def test_admin_registers_and_lists_the_public_key(client, tokens, sessions, vendor) -> None:
    admin = bearer(tokens["admin"])
    created = client.post("/v1/admin/applications", json={"name": APP}, headers=admin)
    assert created.status_code == 201 and created.json()["public_key"] is None
    key = b64_public(vendor)
    for bad, status in (("AAAA", 422), ("not base64!", 422)):
        response = client.put(
            f"/v1/admin/applications/{APP}/public-key", json={"public_key": bad}, headers=admin
        )
        assert response.status_code == status, response.text
    missing = client.put(
        "/v1/admin/applications/nope/public-key", json={"public_key": key}, headers=admin
    )
    assert missing.status_code == 404
    response = client.put(  # the line export-kek prints, blanks and all, as the CLI takes it
        f"/v1/admin/applications/{APP}/public-key", json={"public_key": f" {key}\n"}, headers=admin
    )
    assert response.status_code == 200 and response.json()["public_key"] == key
    listed = client.get("/v1/admin/applications", headers=admin).json()
    assert [a["public_key"] for a in listed] == [key]
    make_customer(sessions, id=8, inference_quota=100, contract_end=YEAR_END)
    denied = ask(client, FakeDevice(), 8, None)
    assert denied.json()["reason"] == "customer_not_proven"
    assert ask(client, FakeDevice(), 8, signed_configuration(vendor, 8)).status_code == 200


def test_cli_creates_and_sets_the_public_key(database_url, vendor) -> None:
    runner = CliRunner()
    url = ["--database-url", database_url]
    result = runner.invoke(cli, ["app", "create", "plain", *url])
    assert result.exit_code == 0, result.output
    assert "has no public key, so a device can name any customer id" in result.output
    key = b64_public(vendor)
    result = runner.invoke(cli, ["app", "create", "bound", "--public-key", key, *url])
    assert result.exit_code == 0 and "no public key" not in result.output
    result = runner.invoke(cli, ["app", "set-public-key", "plain", "AAAA", *url])
    assert result.exit_code == 1 and "public_key must be a raw 32-byte public key" in result.output
    result = runner.invoke(cli, ["app", "set-public-key", "nope", key, *url])
    assert result.exit_code == 1 and "application 'nope' not found" in result.output
    result = runner.invoke(cli, ["app", "set-public-key", "plain", key, *url])
    assert result.exit_code == 0, result.output
    from sklicense import db

    with db.session_factory(database_url)() as session:
        keys = {a.name: a.public_key for a in session.scalars(select(Application))}
    assert keys == {"plain": key, "bound": key}


def test_a_revoked_device_keeps_its_slot(client, bound, vendor) -> None:
    """Revoking a device and then registering a fresh identity must not free its slot."""
    with bound.begin() as session:
        crud.update_customer(session, 7, "test", max_devices=1)
    config = signed_configuration(vendor, 7)
    first = FakeDevice("dev-1")
    assert ask(client, first, 7, config).status_code == 200
    with bound.begin() as session:
        crud.update_device(session, "dev-1", "test", status="revoked")
    response = ask(client, FakeDevice("dev-2"), 7, config)
    assert response.status_code == 403
    assert response.json()["detail"] == (
        "customer 7 already has 1 registered devices (maximum 1), 1 of them revoked (a revoked "
        "device keeps its slot: raise max_devices to register a replacement)"
    )
    with bound.begin() as session:
        crud.update_customer(session, 7, "test", max_devices=2)
    assert ask(client, FakeDevice("dev-2"), 7, config).status_code == 200


def test_unsigned_requests_do_not_spend_a_devices_rate_limit(
    client, bound, vendor, settings
) -> None:
    victim = FakeDevice("victim")
    config = signed_configuration(vendor, 7)
    assert ask(client, victim, 7, config).status_code == 200
    forger = Ed25519PrivateKey.generate()
    for _ in range(settings.licence_requests_per_minute + 5):
        body = victim.licence_request(7, T0, configuration=config)
        response = client.post("/v1/licences", json=body, headers=victim.headers(body, forger))
        assert response.json()["reason"] == "bad_signature"
    assert ask(client, victim, 7, config).status_code == 200


@pytest.mark.parametrize("point", [bytes(32), (1).to_bytes(32, "little")], ids=["zero", "one"])
def test_a_low_order_exchange_key_is_422(client, bound, vendor, point: bytes) -> None:
    device = FakeDevice()
    body = device.licence_request(7, T0, configuration=signed_configuration(vendor, 7))
    body["exchange_public_key"] = base64.b64encode(point).decode("ascii")
    response = client.post("/v1/licences", json=body, headers=device.headers(body))
    assert response.status_code == 422, response.text
    assert "low-order X25519 point" in response.text
