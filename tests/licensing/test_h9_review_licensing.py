"""Review of the licensing changes: usage reports are dropped on the word of the pinned server
only.

A state folder pointed at a licence server URL that answers with another key than the pinned
one (another sklicense server: staging, another vendor's, a wrong port) had its pending usage
reports dropped for good at the first renewal, because that server does not know the device
(``unknown_device``); the licence request that followed was refused for the key, and the right
server never received the counts. The reports are now kept until the server proves to be the
pinned one.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest
from tests.licensing.server_helpers import (
    device_client,
    make_application,
    make_customer,
)

from skruntime.licensing.protocol import b64, unb64


class OtherServer(httpx.BaseTransport):
    """Another sklicense server: its own key, and no record of the device."""

    def __init__(self) -> None:
        self.public_key = secrets.token_bytes(32)
        self.usage_sent = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/public-key":
            return httpx.Response(200, json={"public_key": b64(self.public_key)})
        self.usage_sent += 1
        denial = {"decision": "deny", "reason": "unknown_device", "detail": "not registered"}
        return httpx.Response(403, json=denial)


def test_reports_are_kept_when_the_server_presents_another_key(
    client, sessions, clock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_application(sessions)
    make_customer(sessions, inference_quota=1000)
    pinned = unb64(client.get("/v1/public-key").json()["public_key"])
    folder = tmp_path / "device"
    device = device_client("http://testserver", client._transport, pinned, folder, clock)
    licence = device.ensure_licence()
    device.consume(3)
    device.flush()
    assert device.usage(licence.licence_id) == {"counter": 3, "reported": 0}

    other = OtherServer()
    misdirected = device_client("http://other-server", other, pinned, folder, clock)
    assert misdirected.report_usage() is False
    assert other.usage_sent == 1
    assert device.usage(licence.licence_id) == {"counter": 3, "reported": 0}  # kept
    assert any("presents the public key" in r.getMessage() for r in caplog.records)
    misdirected.close()

    assert device.report_usage() is True  # the pinned server gets them
    assert device.usage(licence.licence_id) == {"counter": 3, "reported": 3}
    device.close()
