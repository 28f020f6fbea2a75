"""Usage reports are dropped on the word of the pinned server
only.

A state folder pointed at a licence server URL that answers with another key than the pinned
one (another sklicense server: staging, another vendor's, a wrong port) had its pending usage
reports dropped for good at the first renewal, because that server does not know the device
(``unknown_device``); the licence request that followed was refused for the key, and the right
server never received the counts. The reports are now kept: that server's answers are signed
with its own key, not the pinned one, so they neither acknowledge nor refuse a report (before
answers were signed, the client asked that server for its key, ``GET /v1/public-key``, once per
pending licence).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.licensing.server_helpers import (
    device_client,
    make_application,
    make_customer,
)

from skruntime.licensing.protocol import SIGNATURE_HEADER, answer_message, sign, unb64


class OtherServer(httpx.BaseTransport):
    """Another sklicense server: its own key, and no record of the device."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.requests: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        denial = {"decision": "deny", "reason": "unknown_device", "detail": "not registered"}
        message = answer_message(request.url.path, 403, request.content, denial)
        headers = {SIGNATURE_HEADER: sign(message, self.key)}
        return httpx.Response(403, content=json.dumps(denial).encode(), headers=headers)


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
    clock.now = licence.expires_at - 30  # the next inference renews: two licences pending
    device.consume(2)
    renewed = device.ensure_licence()
    device.flush()
    assert device.usage(licence.licence_id) == {"counter": 3, "reported": 3}
    assert device.usage(renewed.licence_id) == {"counter": 2, "reported": 0}
    with device._lock:  # the first licence's report too: as if its answer had been lost
        usage = device._read_usage()
        usage[licence.licence_id]["reported"] = 0
        device._write_usage(usage)

    other = OtherServer()
    misdirected = device_client("http://other-server", other, pinned, folder, clock)
    caplog.clear()
    assert misdirected.report_usage() is False
    assert other.requests == ["POST /v1/usage"] * 2  # no key asked, once per licence
    assert device.usage(licence.licence_id) == {"counter": 3, "reported": 0}  # kept
    assert device.usage(renewed.licence_id) == {"counter": 2, "reported": 0}
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith(
        "Usage reports of 2 licence(s) kept: http://other-server answered them without a "
        "signature of a pinned server key (first: HTTP 403 "
    )
    misdirected.close()

    assert device.report_usage() is True  # the pinned server gets them
    assert device.usage(licence.licence_id) == {"counter": 3, "reported": 3}
    assert device.usage(renewed.licence_id) == {"counter": 2, "reported": 2}
    device.close()
