"""An unsigned 422 about ``renews`` from a server known to sign its answers is a failed request.

The runtime takes a 422 refusing ``renews`` as an extra field, signed or not, since servers
older than the signed answers sign nothing. Before, anyone in the network path could answer a
contract-end check with such an unsigned 422: the runtime kept the licence and noted it as
checked, so the next check came a day (``contract_end_check_seconds``) later, for every process
of the device, even once the network path was clean again: a device revoked meanwhile ran on for
that day. Once the runtime has seen this server sign an answer with the pinned key (noted in
``server_keys.json``), its unsigned 422 is not the server's word: a failed renewal, retried
after ``retry_seconds``. Against the real server app, SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from tests.licensing.server_helpers import APP
from tests.licensing.test_contract_end_checks import DAY, audited, contract, runtime

from sklicense import crud
from skruntime.errors import LicenceDeniedError
from skruntime.licensing.protocol import LICENCES_PATH, b64, unb64


class FakesRenewsRefusal(httpx.BaseTransport):
    """The network path; while ``on``, it answers licence requests that carry ``renews`` with
    the unsigned 422 of a server older than ``renews``."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.on = False
        self.faked = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.on and request.url.path == LICENCES_PATH and b'"renews"' in request.content:
            self.faked += 1
            error = {"type": "extra_forbidden", "loc": ["renews"], "msg": "Extra inputs"}
            return httpx.Response(422, json={"detail": [error]})
        return self.inner.handle_request(request)


def test_an_unsigned_renews_refusal_does_not_delay_the_next_check(
    client, sessions, clock, tmp_path, caplog
) -> None:
    start = clock.now
    contract(sessions, clock, 40)
    folder = tmp_path / "device"
    path = FakesRenewsRefusal(client._transport)
    device = runtime(client, clock, folder, path, retry_seconds=300)
    device.consume()
    device.close()  # its usage report gets the server's signed receipt
    pinned = b64(unb64(client.get("/v1/public-key").json()["public_key"]))
    notes = json.loads((folder / "server_keys.json").read_text())
    assert notes == {
        "checked": {"http://testserver": pinned},
        "signs": {"http://testserver": pinned},
    }
    clock.now = start + 10 * DAY  # the first check at the contract end
    device = runtime(client, clock, folder, path, retry_seconds=300)
    device.consume()
    assert audited(sessions, "licence.keep") == 1
    clock.now = start + 11 * DAY  # the next day's check, answered by the man in the middle
    path.on = True
    with caplog.at_level(logging.WARNING, logger="skruntime.licensing.client"):
        device.consume()
    assert path.faked == 1
    assert "Licence renewal failed" in caplog.text and "HTTP 422" in caplog.text
    cached = json.loads((folder / f"licence_{APP}.json").read_text())
    assert cached["checked_at"] == start + 10 * DAY  # not noted as checked
    with sessions.begin() as session:  # the device is revoked meanwhile
        (row,) = crud.list_devices(session, 42)
        crud.update_device(session, row.id, "test", status="revoked")
    path.on = False
    clock.now += 301  # before: no check until the next day
    with pytest.raises(LicenceDeniedError) as denied:
        device.consume()
    assert denied.value.reason == "device_revoked"
    device.close()
