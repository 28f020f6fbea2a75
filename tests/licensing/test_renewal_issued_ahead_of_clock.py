"""A renewal issued ahead of a device clock behind the server's by more than its
``clock_tolerance`` (narrower than the server's ±300 s window) no longer stops a device whose
licence is still valid: the renewal is cached, the current licence stays in use (it raised
``ClockRollbackError`` at every call until the clock caught up), and the renewal is taken,
without another request, once the clock reaches it; another process of the device defers to
it too instead of renewing again. Against the real server app."""

from __future__ import annotations

import logging
from pathlib import Path

from tests.licensing.server_helpers import device_client, make_application, make_customer

from sklicense.models import Customer
from skruntime.licensing.client import LicenceClient
from skruntime.licensing.protocol import unb64

DAY = 86400


def _device(client, clock, folder: Path, skew: list[int]) -> LicenceClient:
    key = unb64(client.get("/v1/public-key").json()["public_key"])
    clock_behind = lambda: clock.now - skew[0]  # noqa: E731
    options = {"clock_tolerance": 60, "overlap_seconds": DAY, "persist_every": 100}
    return device_client(
        "http://testserver", client._transport, key, folder, clock_behind, **options
    )


def test_a_renewal_issued_ahead_of_the_clock_keeps_the_valid_licence(
    client, sessions, clock, tmp_path: Path, caplog
) -> None:
    make_application(sessions)
    make_customer(sessions, default_licence_seconds=7 * DAY)
    skew = [0]
    first = _device(client, clock, tmp_path / "device", skew)
    second = _device(client, clock, tmp_path / "device", skew)  # another process
    old = first.ensure_licence()
    assert second.ensure_licence().licence_id == old.licence_id
    clock.now += 6 * DAY + 200  # inside the overlap window, the licence valid another day
    skew[0] = 100  # the device's clock is 100 s behind the server's now
    with caplog.at_level(logging.WARNING, logger="skruntime.licensing.client"):
        for device in (first, first, second, second):
            assert device.ensure_licence().licence_id == old.licence_id
    assert "ahead of this device's clock" in caplog.text
    with sessions() as session:
        assert session.get(Customer, 42).inferences_granted == 20  # one renewal, not four
    clock.now += 40  # the device's clock reaches the renewal's issue time, less its tolerance
    renewed = {device.ensure_licence().licence_id for device in (first, second)}
    first.close()
    second.close()
    assert len(renewed) == 1 and renewed != {old.licence_id}
    with sessions() as session:
        assert session.get(Customer, 42).inferences_granted == 20
