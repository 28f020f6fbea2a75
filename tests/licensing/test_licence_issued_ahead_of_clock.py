"""A device whose clock is behind the server's by more than its ``clock_tolerance`` (set
narrower than the server's ±300 s window) is granted a licence "issued in its future": the
client refused it (``ClockRollbackError``) without caching it, so every call asked again and
every request drew another allowance from the quota. The licence is now cached first, and used
once the device's clock reaches its issue time. Against the real server app."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.licensing.server_helpers import device_client, make_application, make_customer

from sklicense.models import Customer
from skruntime.errors import ClockRollbackError
from skruntime.licensing.protocol import unb64


def test_a_licence_issued_ahead_of_the_clock_is_charged_once(
    client, sessions, clock, tmp_path: Path
) -> None:
    make_application(sessions)
    make_customer(sessions, inference_quota=1000)
    pinned = unb64(client.get("/v1/public-key").json()["public_key"])
    behind = lambda: clock.now - 100  # 100 s behind the server: inside its window  # noqa: E731
    folder = tmp_path / "device"
    options = {"clock_tolerance": 60, "persist_every": 100}
    device = device_client(
        "http://testserver", client._transport, pinned, folder, behind, **options
    )
    ids = set()
    for _ in range(3):
        with pytest.raises(ClockRollbackError, match="before the issue time") as raised:
            device.ensure_licence()
        ids.add(str(raised.value).split("issue time of licence ")[1].split()[0])
    clock.now += 40  # the device's clock reaches the issue time, less its tolerance
    licence = device.ensure_licence()
    device.close()
    assert ids == {licence.licence_id}
    with sessions() as session:
        assert session.get(Customer, 42).inferences_granted == 10 == licence.inferences
