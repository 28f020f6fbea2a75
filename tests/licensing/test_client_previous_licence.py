"""A process started after a renewal issued ahead of the device's clock (behind the server's by
more than ``clock_tolerance``) was cached raised ``ClockRollbackError`` until the clock reached
the renewal, though the licence it replaces was still valid: the cache held the renewal alone.
The licence it replaces is cached beside it now: a process started meanwhile uses it, counting
on the same counter as the processes that held it, and takes the renewal once the clock
reaches it; a clock set back further than the server's window before the renewal is still
refused. Against the real server app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.licensing.server_helpers import device_client, make_application, make_customer

from sklicense.models import Customer
from skruntime.errors import ClockRollbackError
from skruntime.licensing.client import LicenceClient
from skruntime.licensing.protocol import TIMESTAMP_WINDOW_S, unb64

DAY = 86400
SKEW = 100  # the device's clock is this far behind the server's, beyond clock_tolerance


def _device(client: Any, clock: Any, folder: Path, skew: list[int]) -> LicenceClient:
    """A process of the device whose clock is ``skew[0]`` seconds behind the server's."""
    key = unb64(client.get("/v1/public-key").json()["public_key"])
    options = {"clock_tolerance": 60, "overlap_seconds": DAY}
    return device_client(
        "http://testserver", client._transport, key, folder, lambda: clock.now - skew[0], **options
    )


def _granted(sessions: Any) -> int:
    with sessions() as session:
        return session.get(Customer, 42).inferences_granted


def _renewed_ahead(client: Any, sessions: Any, clock: Any, folder: Path, skew: list[int]) -> Any:
    """A first process's licence, renewed inside its window by a clock behind the server's:
    the renewal is cached, the licence stays in use. Returns the process and its licence."""
    make_application(sessions)
    make_customer(sessions, default_licence_seconds=7 * DAY)
    first = _device(client, clock, folder, skew)
    old = first.ensure_licence()
    first.consume(2)
    clock.now += 6 * DAY + 200  # inside the overlap window, the licence valid another day
    skew[0] = SKEW
    assert first.ensure_licence().licence_id == old.licence_id
    assert _granted(sessions) == 20  # renewed once: 10 + 10
    return first, old


def test_a_process_started_meanwhile_uses_the_licence_the_renewal_replaces(
    client, sessions, clock, tmp_path: Path
) -> None:
    skew = [0]
    first, old = _renewed_ahead(client, sessions, clock, tmp_path / "device", skew)
    started = _device(client, clock, tmp_path / "device", skew)  # after the renewal
    for _ in range(3):
        assert started.ensure_licence().licence_id == old.licence_id
    started.consume(3)
    first.consume(1)
    started.consume(1)
    first.flush()
    started.flush()
    assert started.usage(old.licence_id)["counter"] == 7  # one counter for both processes
    assert _granted(sessions) == 20  # the process started meanwhile renewed nothing
    clock.now += SKEW - 60  # the device's clock reaches the renewal, less its tolerance
    renewed = {device.ensure_licence().licence_id for device in (first, started)}
    assert len(renewed) == 1 and renewed != {old.licence_id}
    started.consume(1)
    first.close()
    started.close()
    assert started.usage(renewed.pop())["counter"] == 1
    assert _granted(sessions) == 20


def test_the_previous_licence_counted_up_stays_used_up(
    client, sessions, clock, tmp_path: Path
) -> None:
    """The licence the renewal replaces, used up by the first process: a process started
    meanwhile counts nothing more on it, and says that the renewal is ahead of the clock."""
    skew = [0]
    first, old = _renewed_ahead(client, sessions, clock, tmp_path / "device", skew)
    first.consume(8)  # its allowance of 10 used up
    first.flush()
    started = _device(client, clock, tmp_path / "device", skew)
    assert started.ensure_licence().licence_id == old.licence_id
    with pytest.raises(ClockRollbackError, match="before the issue time of licence"):
        started.consume(1)
    assert started.usage(old.licence_id)["counter"] == 10
    assert _granted(sessions) == 20
    first.close()
    started.close()


def test_a_clock_set_back_before_the_renewal_gets_no_previous_licence(
    client, sessions, clock, tmp_path: Path
) -> None:
    """A clock further behind the renewal's issue time than the server's window did not ask
    for it: set back (here with the last time seen removed too), it is refused as before,
    though the licence the renewal replaces was valid then."""
    skew = [0]
    first, old = _renewed_ahead(client, sessions, clock, tmp_path / "device", skew)
    first.close()
    (tmp_path / "device" / "clock.json").unlink()
    skew[0] = TIMESTAMP_WINDOW_S + 1
    set_back = _device(client, clock, tmp_path / "device", skew)
    with pytest.raises(ClockRollbackError, match="before the issue time of licence"):
        set_back.ensure_licence()
    set_back.close()
    skew[0] = TIMESTAMP_WINDOW_S  # as far behind as the clock that asked for the renewal was
    started = _device(client, clock, tmp_path / "device", skew)
    assert started.ensure_licence().licence_id == old.licence_id
    started.close()
    assert _granted(sessions) == 20
