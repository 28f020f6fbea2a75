"""A licence used up while its renewal was issued ahead of a device clock behind the server's
by more than ``clock_tolerance``: ``consume`` said "the licence server granted no more at the
last attempt" (``QuotaExhaustedError``), though the server had granted it; it says the clock
is behind (``ClockRollbackError``, naming the renewal), renews no more, and counts on the
renewal once the clock reaches it. Against the real server app."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.licensing.server_helpers import APP, CONFIG_SHA, make_application, make_customer

from sklicense.models import Customer
from skruntime.licensing.client import ClockRollbackError, LicenceClient
from skruntime.licensing.protocol import unb64

DAY = 86400


def test_a_used_up_licence_names_the_renewal_ahead_of_the_clock(
    client, sessions, clock, tmp_path: Path
) -> None:
    make_application(sessions)
    make_customer(sessions, default_licence_seconds=7 * DAY)
    skew = [0]
    device = LicenceClient(
        "http://testserver",
        state_dir=tmp_path / "device",
        server_public_key=unb64(client.get("/v1/public-key").json()["public_key"]),
        application=APP,
        customer_id=42,
        models=["model-a"],
        config_sha256=CONFIG_SHA,
        requested_inferences=3,
        clock_tolerance=60,
        overlap_seconds=DAY,
        clock=lambda: clock.now - skew[0],
        transport=client._transport,
    )
    device.consume(3)  # used up, long before its renewal window
    clock.now += 50
    skew[0] = 100  # the device's clock is 100 s behind the server's now
    for _ in range(3):
        with pytest.raises(ClockRollbackError, match="before the issue time of licence"):
            device.consume(1)
    with sessions() as session:
        assert session.get(Customer, 42).inferences_granted == 6  # one renewal
    clock.now += 40  # the device's clock reaches the renewal's issue time, less its tolerance
    device.consume(1)
    renewal = device.ensure_licence()
    device.close()
    assert device.usage(renewal.licence_id)["counter"] == 1
    with sessions() as session:
        assert session.get(Customer, 42).inferences_granted == 6
