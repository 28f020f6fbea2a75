"""Admin API: roles, validation details, audit entries, auth-failure rate limit."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
from sqlalchemy import select
from tests.licensing.server_helpers import FakeDevice, bearer, make_application, make_customer

from sklicense.models import AuditLog

KEK = base64.b64encode(os.urandom(32)).decode()


def actions(sessions: Any) -> list[str]:
    with sessions() as session:
        return [e.action for e in session.scalars(select(AuditLog).order_by(AuditLog.id))]


def test_no_or_bad_token_is_401(client, tokens) -> None:
    assert client.get("/v1/admin/customers").status_code == 401
    response = client.get("/v1/admin/customers", headers=bearer("skl_wrong"))
    assert response.status_code == 401
    assert response.json() == {"detail": "missing or invalid bearer token"}


def test_read_only_can_read_not_write(client, tokens, sessions) -> None:
    ro = bearer(tokens["read-only"])
    for path in ("applications", "customers", "devices", "licences", "usage", "audit"):
        assert client.get(f"/v1/admin/{path}", headers=ro).status_code == 200, path
    writes = [
        ("post", "/v1/admin/applications", {"name": "x"}),
        ("post", "/v1/admin/customers", {"id": 1, "name": "x", "inference_quota": 1}),
        ("patch", "/v1/admin/customers/1", {"max_devices": 3}),
        ("patch", "/v1/admin/devices/d", {"status": "revoked"}),
        ("put", "/v1/admin/applications/x/kek", {"kek": KEK}),
    ]
    for method, path, payload in writes:
        response = client.request(method, path, json=payload, headers=ro)
        assert response.status_code == 403, path
        assert response.json() == {"detail": "this token is read-only: admin role required"}
    assert "application.create" not in actions(sessions)


def test_admin_flow_is_audited(client, tokens, sessions, clock) -> None:
    admin = bearer(tokens["admin"])
    response = client.post(
        "/v1/admin/applications", json={"name": "demo-app", "kek": KEK}, headers=admin
    )
    assert response.status_code == 201
    assert response.json()["has_kek"] is True and "kek" not in response.json()
    response = client.put("/v1/admin/applications/demo-app/kek", json={"kek": KEK}, headers=admin)
    assert response.status_code == 200
    customer = {
        "id": 42,
        "name": "Acme",
        "contract_end": "2027-01-01T00:00:00Z",
        "max_devices": 2,
        "default_licence_seconds": 3600,
    }
    response = client.post("/v1/admin/customers", json=customer, headers=admin)
    assert response.status_code == 201, response.json()
    assert response.json()["contract_end"] == "2027-01-01T00:00:00Z"
    response = client.patch(
        "/v1/admin/customers/42", json={"inference_quota": 50, "max_devices": 5}, headers=admin
    )
    assert response.json()["inference_quota"] == 50 and response.json()["max_devices"] == 5
    device = FakeDevice("dev-1")
    body = device.licence_request(42, clock.now)
    assert client.post("/v1/licences", json=body, headers=device.headers(body)).status_code == 200
    devices = client.get("/v1/admin/devices", headers=admin).json()
    assert [d["id"] for d in devices] == ["dev-1"]
    response = client.patch(
        "/v1/admin/devices/dev-1",
        json={"status": "revoked", "duration_override_seconds": 60},
        headers=admin,
    )
    assert response.json()["status"] == "revoked"
    licences = client.get("/v1/admin/licences?customer_id=42", headers=admin).json()
    assert len(licences) == 1 and licences[0]["inferences"] == 50
    assert actions(sessions)[2:] == [
        "application.create",
        "application.import_kek",
        "customer.create",
        "customer.update",
        "device.register",
        "licence.allow",
        "device.revoke",
    ]
    audit = client.get("/v1/admin/audit?limit=1", headers=admin).json()
    assert audit[0]["action"] == "device.revoke" and audit[0]["target"] == "device:dev-1"
    assert audit[0]["actor"].startswith("token:")


@pytest.mark.parametrize(
    ("payload", "status", "detail"),
    [
        (
            {"id": 7, "name": "NoPolicy"},
            422,
            "a customer needs at least one policy: contract_end and/or inference_quota must be "
            "set, but both are empty",
        ),
        ({"id": 42, "name": "Dup", "inference_quota": 1}, 409, "customer 42 already exists"),
    ],
)
def test_customer_create_errors(client, tokens, sessions, payload, status, detail) -> None:
    make_customer(sessions)
    response = client.post("/v1/admin/customers", json=payload, headers=bearer(tokens["admin"]))
    assert response.status_code == status
    assert response.json() == {"detail": detail}


def test_customer_patch_cannot_drop_last_policy(client, tokens, sessions) -> None:
    make_customer(sessions)
    response = client.patch(
        "/v1/admin/customers/42", json={"inference_quota": None}, headers=bearer(tokens["admin"])
    )
    assert response.status_code == 422
    assert response.json()["detail"].startswith("a customer needs at least one policy")
    missing = client.patch(
        "/v1/admin/customers/9", json={"max_devices": 2}, headers=bearer(tokens["admin"])
    )
    assert (missing.status_code, missing.json()) == (404, {"detail": "customer 9 not found"})


def test_application_errors(client, tokens, sessions) -> None:
    admin = bearer(tokens["admin"])
    make_application(sessions)
    dup = client.post("/v1/admin/applications", json={"name": "demo-app"}, headers=admin)
    assert (dup.status_code, dup.json()) == (
        409,
        {"detail": "application 'demo-app' already exists"},
    )
    short = base64.b64encode(b"x" * 16).decode()
    bad = client.post("/v1/admin/applications", json={"name": "b", "kek": short}, headers=admin)
    assert (bad.status_code, bad.json()) == (
        422,
        {"detail": "kek must decode to 32 bytes, but got 16 bytes"},
    )


def test_admin_auth_failures_are_rate_limited(client, tokens, settings) -> None:
    """Only failures count and only failures get 429: a valid token always passes, so bad
    tokens sent from an admin's address cannot lock the admin out."""
    for _ in range(settings.admin_auth_failures_per_minute):
        assert client.get("/v1/admin/audit", headers=bearer("nope")).status_code == 401
    response = client.get("/v1/admin/audit", headers=bearer("nope"))
    assert response.status_code == 429
    assert response.json() == {"detail": "too many failed admin authentications; retry in a minute"}
    assert client.get("/v1/admin/audit", headers=bearer(tokens["admin"])).status_code == 200
    assert client.get("/v1/admin/audit", headers=bearer(tokens["read-only"])).status_code == 200
    assert client.get("/v1/admin/audit").status_code == 429


def test_configured_admin_token(settings, clock, tokens) -> None:
    from fastapi.testclient import TestClient

    from sklicense.api.main import create_app

    token = "t" * 40
    app = create_app(settings.with_overrides(admin_token=token), clock)
    with TestClient(app) as client:
        response = client.get("/v1/admin/customers", headers=bearer(token))
        assert response.status_code == 200


def test_health_and_public_key(client) -> None:
    assert client.get("/v1/health").json() == {"status": "ok"}
    key = client.get("/v1/public-key").json()
    assert key["algorithm"] == "Ed25519" and len(base64.b64decode(key["public_key"])) == 32
