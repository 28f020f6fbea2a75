"""Review of commit 2c71203's admin answers: the ``max_devices`` warning said of devices all
revoked that "they keep being licensed" (none is: a revoked device is denied), telling the
operator to revoke devices already revoked; the ``DELETE`` of an application answered "a
application is never deleted"."""

from __future__ import annotations

from tests.licensing.server_helpers import FakeDevice, bearer, make_application, make_customer


def test_a_limit_below_revoked_devices_does_not_say_they_are_licensed(
    client, sessions, clock, tokens
) -> None:
    make_application(sessions)
    make_customer(sessions, max_devices=3)
    admin = bearer(tokens["admin"])
    devices = [FakeDevice() for _ in range(3)]
    for device in devices:
        body = device.licence_request(42, clock.now, requested_inferences=1)
        assert client.post("/v1/licences", json=body, headers=device.headers(body)).is_success
    revoke = {"status": "revoked"}
    for device in devices[:2]:
        assert client.patch(f"/v1/admin/devices/{device.id}", json=revoke, headers=admin).is_success

    one_active = client.patch("/v1/admin/customers/42", json={"max_devices": 2}, headers=admin)
    warning = one_active.json()["warning"]
    assert "3 registered devices (1 active)" in warning
    assert "the 1 active ones keep being licensed" in warning and "device revoke" in warning

    assert client.patch(f"/v1/admin/devices/{devices[2].id}", json=revoke, headers=admin).is_success
    none_active = client.patch("/v1/admin/customers/42", json={"max_devices": 1}, headers=admin)
    warning = none_active.json()["warning"]
    assert "3 registered devices (0 active)" in warning
    assert "refused too_many_devices until the limit is above 3" in warning
    assert "licensed" not in warning and "revoke them" not in warning


def test_deleting_an_application_is_said_in_english(client, sessions, tokens) -> None:
    make_application(sessions)
    answer = client.delete("/v1/admin/applications/demo-app", headers=bearer(tokens["admin"]))
    assert answer.status_code == 405
    assert answer.json()["detail"].startswith("an application is never deleted")
