"""A device owner keeps an expired licence running by setting the clock back again and again.

The rollback check refused a clock more than ``clock_tolerance`` (300 s) before the last time
seen, but the last time seen only ever followed the clock: set back by 299 s whenever it
reached the licence's expiry, with no state file touched and the network cut, a 1-hour
licence kept running for as long as the loop went on (30 days, 43,200 inferences, in the
reproduction). The time elapsed now counts (the monotonic clock, which nobody sets back): the
last time seen advances with it while the clock stands behind, so the loop gains at most
``clock_tolerance`` past the expiry, in one process or in processes started afresh after each
set-back. A clock NTP stepped back once, within the tolerance, keeps working.
"""

from __future__ import annotations

import time as real_time
from pathlib import Path
from typing import Any

import pytest
from tests.licensing.server_helpers import device_client, make_application, make_customer
from tests.licensing.test_contract_end_checks import Network

from skruntime.errors import ClockRollbackError, LicenceError
from skruntime.licensing import client as client_module
from skruntime.licensing.protocol import unb64

HOUR = 3600
STEP = 60  # seconds between inferences
TOLERANCE = 300


class DeviceTime:
    """The device's ``time`` module: the system clock, which its owner (root) sets, and the
    monotonic clock, which nobody sets back."""

    def __init__(self, now: int) -> None:
        self.now = now
        self.elapsed = 0.0  # awake
        self.suspended = 0.0  # the system suspended (monotonic stands still, boot time not)
        # one function each, as the time module's: the runtime's default clock is time.time
        self.time = lambda: self.now
        self.monotonic = lambda: self.elapsed
        self.clock_gettime = self._clock_gettime

    def _clock_gettime(self, clock_id: int) -> float:
        if clock_id == real_time.CLOCK_BOOTTIME:
            return self.elapsed + self.suspended
        if clock_id == real_time.CLOCK_MONOTONIC:
            return self.elapsed
        return real_time.clock_gettime(clock_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(real_time, name)

    def tick(self, seconds: int) -> None:
        self.now += seconds
        self.elapsed += seconds


@pytest.fixture
def owned(client, sessions, clock, monkeypatch: pytest.MonkeyPatch) -> tuple[DeviceTime, Network]:
    """A customer licensed an hour at a time with a quota that never runs out, and the device
    of its owner: its clocks (:class:`DeviceTime`, in the client's ``time``) and its network."""
    make_application(sessions)
    make_customer(sessions, inference_quota=10**9, default_licence_seconds=HOUR)
    device_time = DeviceTime(clock.now)
    monkeypatch.setattr(client_module, "time", device_time)
    return device_time, Network(client._transport)


def device(client: Any, network: Network, folder: Path, device_time: DeviceTime) -> Any:
    return device_client(
        "http://testserver",
        network,
        unb64(client.get("/v1/public-key").json()["public_key"]),
        folder,
        device_time.time,  # the system clock
        overlap_seconds=STEP,
        requested_inferences=100_000,
    )


def licensed_then_offline(
    client: Any, owned: tuple[DeviceTime, Network], folder: Path, *, close: bool = False
) -> Any:
    """A runtime of the owner's device licensed once (closed after its inference if
    ``close``), then cut off the network."""
    device_time, network = owned
    runtime = device(client, network, folder, device_time)
    runtime.consume()
    if close:
        runtime.close()
    network.up = False
    return runtime


def offline_before_expiry(
    client: Any, owned: tuple[DeviceTime, Network], folder: Path, *, close: bool = False
) -> Any:
    """:func:`licensed_then_offline`, its clock then a minute before the licence's expiry."""
    runtime = licensed_then_offline(client, owned, folder, close=close)
    owned[0].tick(HOUR - 60)
    return runtime


@pytest.mark.parametrize("restart", [False, True], ids=["one-process", "restarted"])
def test_a_clock_set_back_again_and_again_gains_at_most_the_tolerance(
    client, clock, owned, tmp_path: Path, restart: bool
) -> None:
    device_time, network = owned
    folder = tmp_path / "device"
    runtime = device(client, network, folder, device_time)
    runtime.consume()
    expires_at = runtime.ensure_licence().expires_at
    assert expires_at == clock.now + HOUR
    network.up = False  # the owner cuts the network: no renewal, no clock confirmation
    past_expiry = 0  # inferences run once the real time passed the licence's expiry
    with pytest.raises(ClockRollbackError) as stopped:
        for _ in range(2 * 24 * HOUR // STEP):  # 2 days
            device_time.tick(STEP)
            if device_time.now >= expires_at - 1:
                device_time.now -= TOLERANCE - 1  # set back, within the tolerance
                if restart:  # the process killed (no close), started again
                    runtime = device(client, network, folder, device_time)
            runtime.consume()
            if clock.now + device_time.elapsed >= expires_at:
                past_expiry += 1
    # before: ran the whole 2 days (2,820 inferences past the expiry); now at most the
    # tolerance's worth (300 s, an inference a minute)
    assert past_expiry <= TOLERANCE // STEP
    assert clock.now + device_time.elapsed <= expires_at + TOLERANCE + STEP
    assert "the clock was set back" in str(stopped.value)
    assert "counting the time elapsed since" in str(stopped.value)


def test_a_clock_held_still_stops_at_the_tolerance(client, owned, tmp_path: Path) -> None:
    """The owner holds the clock a minute before the expiry (sets it back a second every
    second): before, the licence never expired."""
    device_time, _ = owned
    runtime = offline_before_expiry(client, owned, tmp_path / "device")
    held = device_time.now
    ran = 0
    with pytest.raises(LicenceError):
        for _ in range(2 * HOUR):  # 2 hours, an inference a second
            device_time.tick(1)
            device_time.now = held
            runtime.consume()
            ran += 1
    assert ran <= TOLERANCE


def test_a_clock_stepped_back_once_within_the_tolerance_keeps_working(
    client, owned, tmp_path: Path
) -> None:
    """NTP steps the clock back by 200 s once: the licence keeps working, in this process and
    in one started afterwards, until (about) its expiry."""
    device_time, network = owned
    folder = tmp_path / "device"
    runtime = device(client, network, folder, device_time)
    runtime.consume()
    network.up = False
    device_time.tick(10 * STEP)
    runtime.consume()
    device_time.now -= 200
    for _ in range(20):
        device_time.tick(STEP)
        runtime.consume()
    runtime.close()
    again = device(client, network, folder, device_time)
    for _ in range(20):
        device_time.tick(STEP)
        again.consume()
    again.close()


def test_processes_started_again_and_again_behind_a_stepped_back_clock_keep_working(
    client, owned, tmp_path: Path
) -> None:
    """Behind the last time seen, a process saves it a second ahead; closing, it gives that
    second back: 150 processes started in turn after NTP stepped the clock back by 200 s do not
    push the time seen past the tolerance (each would have added its second)."""
    device_time, network = owned
    folder = tmp_path / "device"
    licensed_then_offline(client, owned, folder, close=True)
    device_time.now -= 200
    for _ in range(150):
        runtime = device(client, network, folder, device_time)
        runtime.consume()
        runtime.close()
    seen = client_module.LicenceClient._read_last_seen(runtime)
    assert seen <= device_time.now + 200


def test_processes_closed_within_a_second_behind_a_held_clock_stop_at_the_tolerance(
    client, owned, tmp_path: Path
) -> None:
    """The owner holds the clock a minute before the expiry and runs each process for under a
    second, closing it: the second each one began counts, so they stop at the tolerance (with
    the whole seconds only, every process gave back its reserved second, for ever)."""
    device_time, network = owned
    folder = tmp_path / "device"
    offline_before_expiry(client, owned, folder, close=True)
    held = device_time.now
    started = 0
    with pytest.raises(LicenceError):
        for _ in range(2000):  # 30 minutes of processes of 0.9 s
            device_time.now = held
            runtime = device(client, network, folder, device_time)
            started += 1
            runtime.consume()
            device_time.elapsed += 0.9
            runtime.close()
    assert started <= TOLERANCE + 60


def test_processes_sharing_the_state_folder_behind_a_stepped_back_clock_keep_working(
    client, owned, tmp_path: Path
) -> None:
    """NTP steps the clock back by 250 s while three processes of one state folder run, an
    inference each every 0.5 s for 2 minutes: the time seen stays 250 s (and a second) ahead
    of the clock. Before, each process saved the time another one had saved (its second
    reserved ahead) a second ahead again and took it as its own: the time seen ran ahead of the
    clock by two seconds every second, and all three were refused (``ClockRollbackError``)
    after 26 s (reproduced with three real processes too)."""
    device_time, network = owned
    folder = tmp_path / "device"
    runtimes = [device(client, network, folder, device_time) for _ in range(3)]
    for runtime in runtimes:
        runtime.consume()
    network.up = False
    device_time.tick(60)
    device_time.now -= 250  # NTP steps the clock back
    start = device_time.now
    for _ in range(2 * 60 * 2):  # 2 minutes
        for runtime in runtimes:
            device_time.elapsed += 0.5 / len(runtimes)  # the inferences take turns
            runtime.consume()
        device_time.now = start + int(device_time.elapsed - 60)
    seen = client_module.LicenceClient._read_last_seen(runtimes[0])
    assert seen - device_time.now <= 250 + 2
    for runtime in runtimes:
        runtime.close()
    assert client_module.LicenceClient._read_last_seen(runtimes[0]) - device_time.now <= 250 + 2


@pytest.mark.skipif(not hasattr(real_time, "CLOCK_BOOTTIME"), reason="no CLOCK_BOOTTIME (Linux)")
def test_a_process_kept_running_across_suspends_stops_at_the_tolerance(
    client, owned, tmp_path: Path
) -> None:
    """The owner suspends the system for an hour between inferences (``rtcwake -m mem``) and
    sets the clock back to a minute before the expiry after each resume, in one process kept
    running. The monotonic clock (``CLOCK_MONOTONIC``) stands still while suspended: counting
    only the time awake (0.1 s a cycle), the licence ran 3,000 cycles (125 days) past its
    expiry; the boot-time clock counts the suspends."""
    device_time, _ = owned
    runtime = offline_before_expiry(client, owned, tmp_path / "device")
    held = device_time.now
    cycles = 0
    with pytest.raises(ClockRollbackError):
        for _ in range(400):
            device_time.suspended += HOUR  # suspended: the clock runs on, monotonic does not
            device_time.now += HOUR
            device_time.now = held  # set back after the resume
            device_time.elapsed += 0.1
            runtime.consume()
            cycles += 1
    assert cycles * HOUR <= TOLERANCE + 60


def test_processes_started_in_turn_faster_than_one_a_second_behind_a_stepped_back_clock(
    client, owned, tmp_path: Path
) -> None:
    """NTP steps the clock back by 200 s; 400 processes are then started in turn, one every
    0.15 s, each running 0.05 s (one inference) and closing. A closing process gives back
    exactly the part of its reserved second it did not reach: the time seen advances by the
    time the processes ran, and the clock catches up. Before, each counted a whole second (the
    second begun): the time seen ran ahead of the clock by 0.85 s a process, and the 120th was
    refused (``ClockRollbackError``; reproduced with forked processes too)."""
    device_time, network = owned
    folder = tmp_path / "device"
    licensed_then_offline(client, owned, folder, close=True)
    device_time.now -= 200  # NTP steps the clock back
    start, started = device_time.now, device_time.elapsed
    for _ in range(400):
        runtime = device(client, network, folder, device_time)
        runtime.consume()
        device_time.elapsed += 0.05
        runtime.close()
        device_time.elapsed += 0.1  # until the next process starts
        device_time.now = start + int(device_time.elapsed - started)
    seen = client_module.LicenceClient._read_last_seen(runtime)
    assert seen - device_time.now <= 200 - 400 * 0.1 + 2


@pytest.mark.parametrize("restart", [False, True], ids=["one-process", "killed-processes"])
def test_a_clock_held_still_with_inferences_more_often_than_a_second_stops(
    client, owned, tmp_path: Path, restart: bool
) -> None:
    """The owner holds the clock a minute before the expiry and runs an inference every 0.1 s,
    in one process or in processes killed (no close) after each one. Before, a call that found
    the clock at the last time seen took the clock again as the time it saw, dropping the time
    elapsed since: the time seen never advanced, and the licence ran for ever (an hour of
    inferences in one process, 4,000 in processes killed in turn)."""
    device_time, network = owned
    folder = tmp_path / "device"
    runtime = offline_before_expiry(client, owned, folder)
    held = device_time.now
    ran = 0
    with pytest.raises(LicenceError):
        for _ in range(4000):  # 400 s
            device_time.elapsed += 0.1
            device_time.now = held
            if restart:
                runtime = device(client, network, folder, device_time)
            runtime.consume()
            ran += 1
    assert ran <= (TOLERANCE + 2) * 10
