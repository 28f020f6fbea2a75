"""A clock before the last time seen is confirmed by the licence server for free.

Before, the runtime asked the server to confirm such a clock with a plain licence request:
the server issued a new licence, drawing a new allowance from the customer's quota, each time
the clock had jumped forward once and was corrected (a new allowance per confirmation, for a
device that still held a valid licence). A usage report stamped with the device's time proves
as much, free: the server checks the timestamp (``stale_request`` beyond its window) before it
answers a report, and signs its answer for that very report. A runtime still running since
the jump no longer writes the jumped time back over the confirmed one. Against the real server
app, SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from tests.licensing.server_helpers import make_application, make_customer
from tests.licensing.test_contract_end_checks import ALLOWANCE, Network, granted, runtime

from sklicense.models import UsageReport
from skruntime.errors import ClockRollbackError
from skruntime.licensing.protocol import USAGE_PATH

DAY = 86400


class Device:
    """A device whose clock runs apart from the server's."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def last_seen(folder: Path) -> int:
    return json.loads((folder / "clock.json").read_text())["last_seen"]


def reports(sessions: Any) -> list[tuple[str, int]]:
    with sessions() as session:
        return sorted(session.execute(select(UsageReport.report_id, UsageReport.counter)).all())


def jumped_and_corrected(client: Any, sessions: Any, clock: Any, folder: Path) -> Device:
    """A device that got a 1-year licence, ran 7 inferences with its clock 180 days ahead
    (the server unaware), then had its clock corrected to the server's time, an hour on."""
    make_application(sessions)
    make_customer(sessions, inference_quota=10_000, default_licence_seconds=365 * DAY)
    device = Device(clock.now)
    first = runtime(client, device, folder, persist_every=1)
    first.consume(2)
    first.close()
    device.now = clock.now + 180 * DAY  # the jump: the cached licence is valid, no server call
    jumped = runtime(client, device, folder, persist_every=1)
    jumped.consume(5)
    jumped.close()  # its report is refused: stale_request
    assert last_seen(folder) == clock.now + 180 * DAY
    clock.now += 3600
    device.now = clock.now  # corrected
    return device


def test_a_corrected_clock_is_confirmed_without_a_new_licence(
    client, sessions, clock, tmp_path, caplog
) -> None:
    folder = tmp_path / "device"
    device = jumped_and_corrected(client, sessions, clock, folder)
    assert granted(sessions) == (ALLOWANCE, 1)
    with caplog.at_level("WARNING", logger="skruntime.licensing.client"):
        recovered = runtime(client, device, folder, persist_every=1)
        licence = recovered.ensure_licence()
    assert granted(sessions) == (ALLOWANCE, 1)  # before: (100, 2), a licence per confirmation
    assert licence.issued_at == clock.now - 3600  # the licence it held
    assert last_seen(folder) == clock.now
    assert "the licence server confirms it (its signed answer to usage report" in caplog.text
    # the confirming report is the licence's counter, reported
    assert reports(sessions) == [(f"{licence.licence_id}:2", 2), (f"{licence.licence_id}:7", 7)]
    assert recovered.usage() == {"counter": 7, "reported": 7}
    recovered.consume(3)
    recovered.close()
    assert recovered.usage(licence.licence_id) == {"counter": 10, "reported": 10}
    assert granted(sessions) == (ALLOWANCE, 1)


def test_a_clock_set_back_is_still_refused_and_charges_nothing(
    client, sessions, clock, tmp_path
) -> None:
    folder = tmp_path / "device"
    device = jumped_and_corrected(client, sessions, clock, folder)
    device.now = clock.now - 10 * DAY  # set back, behind the server too
    back = runtime(client, device, folder, persist_every=1)
    with pytest.raises(ClockRollbackError, match=r"did not confirm this clock.*stale_request"):
        back.ensure_licence()
    assert last_seen(folder) == clock.now - 3600 + 180 * DAY
    assert granted(sessions) == (ALLOWANCE, 1)
    back.close()


def test_a_tolerance_below_the_server_window_still_needs_a_licence(
    client, sessions, clock, tmp_path
) -> None:
    """A signed receipt proves the clock within the server's window (300 s) only: a runtime
    that tolerates less asks for a licence, whose signed issue time it compares with its own,
    as before."""
    folder = tmp_path / "device"
    device = jumped_and_corrected(client, sessions, clock, folder)
    device.now = clock.now + 100  # within the server's window, beyond the tolerance
    strict = runtime(client, device, folder, persist_every=1, clock_tolerance=10)
    with pytest.raises(ClockRollbackError, match=r"did not confirm this clock.*it issued"):
        strict.ensure_licence()
    assert granted(sessions) == (2 * ALLOWANCE, 2)
    strict.close()


class FakeReceipts(httpx.BaseTransport):
    """A man in the middle who answers usage reports with an unsigned receipt."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == USAGE_PATH:
            report_id = json.loads(request.content)["report_id"]
            return httpx.Response(200, json={"accepted": True, "report_id": report_id})
        return self.inner.handle_request(request)


def test_an_unsigned_receipt_confirms_nothing(client, sessions, clock, tmp_path) -> None:
    folder = tmp_path / "device"
    device = jumped_and_corrected(client, sessions, clock, folder)
    device.now = clock.now - 10 * DAY  # set back: only a faked answer could confirm it
    faked = runtime(client, device, folder, FakeReceipts(client._transport), persist_every=1)
    with pytest.raises(ClockRollbackError, match=r"did not confirm this clock.*stale_request"):
        faked.ensure_licence()  # then asked with a licence request, which the server refuses
    assert last_seen(folder) == clock.now - 3600 + 180 * DAY
    assert granted(sessions) == (ALLOWANCE, 1)
    faked.close()


def test_a_process_that_saw_the_jump_does_not_undo_the_confirmation(
    client, sessions, clock, tmp_path
) -> None:
    """A runtime still running since the jump wrote its last time seen, 180 days ahead, over the
    confirmed one when it closed: every later process was refused again, and offline until the
    clock reached that time."""
    folder = tmp_path / "device"
    make_application(sessions)
    make_customer(sessions, inference_quota=10_000, default_licence_seconds=365 * DAY)
    device = Device(clock.now)
    first = runtime(client, device, folder)
    first.ensure_licence()
    first.close()
    device.now = clock.now + 180 * DAY
    running = runtime(client, device, folder)
    running.consume()
    clock.now += 3600
    device.now = clock.now  # corrected
    runtime(client, device, folder).ensure_licence()  # confirmed by the server
    assert last_seen(folder) == clock.now
    running.close()
    assert last_seen(folder) == clock.now  # before: clock.now - 3600 + 180 days
    network = Network(client._transport)
    network.up = False
    offline = runtime(client, device, folder, network)
    offline.ensure_licence()  # before: ClockRollbackError, the server unreachable
    offline.close()
