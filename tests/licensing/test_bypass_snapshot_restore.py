"""What docs/licensing.md ("What holds, and what does not") says a device owner who restores the
state folder gets, measured: there is no bound. Each restore of a snapshot taken right after
the first licence gives its whole allowance back, and with ``clock.json`` restored and the
clock set back, its validity too, while the server granted one allowance. Nothing on a device
its owner controls can tell a restored file from one never changed; the server's quota bounds
what it grants, not what such a device runs. This test pins the figures the docs quote."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tests.licensing.server_helpers import make_application, make_customer
from tests.licensing.test_bypass_clock_loop import HOUR, DeviceTime, device
from tests.licensing.test_contract_end_checks import Network

from sklicense.models import Customer
from skruntime.errors import QuotaExhaustedError
from skruntime.licensing import client as client_module

ALLOWANCE = 10
RESTORES = 20


def test_each_restore_of_a_snapshot_gives_the_allowance_back(
    client, sessions, clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_application(sessions)
    make_customer(sessions, inference_quota=2 * ALLOWANCE, default_licence_seconds=HOUR)
    device_time = DeviceTime(clock.now)
    monkeypatch.setattr(client_module, "time", device_time)
    network = Network(client._transport)
    folder, snapshot = tmp_path / "device", tmp_path / "snapshot"
    first = device(client, network, folder, device_time)
    first.requested_inferences = ALLOWANCE
    first.ensure_licence()
    first.close()
    shutil.copytree(folder, snapshot)
    network.up = False  # for good
    ran = []
    for _ in range(RESTORES):
        runtime = device(client, network, folder, device_time)
        count = 0
        with pytest.raises(QuotaExhaustedError):
            while True:
                runtime.consume()
                count += 1
                device_time.tick(60)
        ran.append(count)
        shutil.rmtree(folder)
        shutil.copytree(snapshot, folder)  # the owner restores the snapshot
        device_time.tick(HOUR)  # an hour later; the clock set back to the snapshot's time
        device_time.now = clock.now + 10
    assert ran == [ALLOWANCE] * RESTORES  # 200 inferences, the last ones 20 hours after expiry
    assert device_time.elapsed > RESTORES * HOUR
    with sessions() as session:
        assert session.get(Customer, 42).inferences_granted == ALLOWANCE
