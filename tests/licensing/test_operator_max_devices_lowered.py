"""A device limit lowered below the devices a customer already registered: before, ``customer
edit --max-devices 1`` (``PATCH`` with ``max_devices``) said nothing, and all three devices
went on being licensed, which the operator meant to stop. Now it warns, saying that they keep
being licensed and that revoking them is how to stop them."""

from __future__ import annotations

import json

from tests.licensing.server_helpers import FakeDevice, bearer, make_application, make_customer
from typer.testing import CliRunner

from sklicense.cli import app as cli


def register(client, clock, count: int) -> list[int]:
    statuses = []
    for _ in range(count):
        device = FakeDevice()
        body = device.licence_request(42, clock.now, requested_inferences=1)
        statuses.append(client.post("/v1/licences", json=body, headers=device.headers(body)))
    return [(s.status_code, s.json().get("reason")) for s in statuses]


def test_a_limit_below_the_registered_devices_is_warned_about(
    client, sessions, clock, tokens, database_url
) -> None:
    make_application(sessions)
    make_customer(sessions, max_devices=3)
    assert register(client, clock, 3) == [(200, None)] * 3

    edit = ["customer", "edit", "--id", "42", "--max-devices", "1"]
    result = CliRunner().invoke(cli, [*edit, "--database-url", database_url])
    assert result.exit_code == 0 and json.loads(result.stdout)["max_devices"] == 1
    assert "Warning: customer 42 already has 3 registered devices (3 active)" in result.stderr
    assert "the 3 active ones keep being licensed" in result.stderr
    assert "device revoke" in result.stderr

    patched = client.patch(
        "/v1/admin/customers/42", json={"max_devices": 2}, headers=bearer(tokens["admin"])
    )
    assert "3 registered devices" in patched.json()["warning"]
    fits = client.patch(
        "/v1/admin/customers/42", json={"max_devices": 3}, headers=bearer(tokens["admin"])
    )
    assert fits.json()["warning"] is None
    admin = bearer(tokens["admin"])
    named = client.patch("/v1/admin/customers/42", json={"name": "A"}, headers=admin)
    assert named.json()["warning"] is None
