"""Review of commit 2c71203's warning of a replaced KEK: ``sklicense app import-kek`` warned,
but ``PUT /v1/admin/applications/{name}/kek``, which replaces it the same way, answered as
before, without a word: an operator using the admin API was not told that the devices
holding models protected under the old KEK can no longer open them. It now answers the same
``warning`` (null when there was no KEK or it is the same)."""

from __future__ import annotations

import base64

from tests.licensing.server_helpers import (
    FakeDevice,
    bearer,
    make_application,
    make_customer,
    random_kek,
)


def test_the_admin_api_warns_of_a_replaced_kek(client, sessions, clock, tokens) -> None:
    make_application(sessions)  # no KEK yet
    make_customer(sessions)
    admin = bearer(tokens["admin"])

    def put(kek: bytes):
        body = {"kek": base64.b64encode(kek).decode()}
        answer = client.put("/v1/admin/applications/demo-app/kek", json=body, headers=admin)
        assert answer.status_code == 200, answer.text
        return answer.json()["warning"]

    old = random_kek()
    assert put(old) is None  # the first KEK
    device = FakeDevice()
    body = device.licence_request(42, clock.now, requested_inferences=1)
    assert client.post("/v1/licences", json=body, headers=device.headers(body)).is_success
    assert put(old) is None  # the same again
    warning = put(random_kek())
    assert warning.startswith("this KEK replaces another one")
    assert "(1 licence(s) issued with the old KEK are still valid)" in warning
    listed = client.get("/v1/admin/applications", headers=admin).json()
    assert [a["warning"] for a in listed] == [None]
