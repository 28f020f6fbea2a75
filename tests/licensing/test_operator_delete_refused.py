"""An operator deleting a customer (a device, an application) through the admin API: rows are
never deleted, but the answer was a bare 405 "Method Not Allowed", which says neither why nor
what to do. Now it says both; other 405s and 404s are answered as before."""

from __future__ import annotations

from tests.licensing.server_helpers import bearer, make_application, make_customer


def test_deleting_a_customer_device_or_application_says_what_to_do(
    client, sessions, tokens
) -> None:
    make_application(sessions)
    make_customer(sessions)
    admin = bearer(tokens["admin"])
    for path, instead in (
        ("/v1/admin/customers/42", "contract end"),
        ("/v1/admin/devices/dev-1", "revoke it"),
        ("/v1/admin/applications/demo-app", "model list"),
    ):
        answer = client.delete(path, headers=admin)
        assert answer.status_code == 405, answer.text
        detail = answer.json()["detail"]
        assert "is never deleted" in detail and instead in detail, detail
        assert "DELETE" not in answer.headers.get("allow", "")
    assert client.delete("/v1/admin/customers", headers=admin).json() == {
        "detail": "Method Not Allowed"
    }
    assert client.get("/v1/admin/nowhere", headers=admin).json() == {"detail": "Not Found"}
    assert client.delete("/v1/admin/customers/42").status_code in (401, 405)
