"""A licence that expires on arrival (the device's clock ahead of the server's, inside the
±300 s window) is refused by the device after the server drew its allowance from the quota.
The device asked again at every inference call: 20 calls drew 20 licences, 200 inferences of
the quota, none of them usable. Now the server denies a request stamped at or after the
contract end (``contract_ended``, nothing drawn), and the device raises the server's last
unusable answer again until ``retry_seconds`` pass instead of asking anew."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from tests.licensing import test_client as fake
from tests.licensing.server_helpers import (
    T0,
    Clock,
    FakeDevice,
    device_client,
    make_application,
    make_customer,
)

from sklicense.models import Customer, Licence
from skruntime.errors import LicenceDeniedError, LicenceError
from skruntime.licensing.protocol import unb64

CALLS = 20


def drawn(sessions: Any) -> tuple[int, int]:
    """(licences issued, inferences granted) of customer 42."""
    with sessions() as session:
        issued = session.scalar(select(func.count()).select_from(Licence))
        return issued, session.get(Customer, 42).inferences_granted


def device(client: Any, folder: Path, clock: Clock) -> Any:
    pinned = unb64(client.get("/v1/public-key").json()["public_key"])
    return device_client("http://testserver", client._transport, pinned, folder, clock)


def test_a_request_stamped_after_the_contract_end_is_denied(client, sessions, clock) -> None:
    make_application(sessions)
    make_customer(sessions, contract_end=dt.datetime.fromtimestamp(T0 + 5, dt.UTC))
    ahead = FakeDevice()
    body = ahead.licence_request(42, T0 + 5)  # the device's clock: 5 s ahead of the server's
    answer = client.post("/v1/licences", json=body, headers=ahead.headers(body))
    assert (answer.status_code, answer.json()["reason"]) == (403, "contract_ended")
    assert answer.json()["detail"] == (
        "the contract of customer 42 ends at 2026-05-28T20:26:45+00:00, not after the request's "
        f"timestamp {T0 + 5}: the device's clock is 5 s ahead of the server's, so a licence "
        "would have expired on arrival. Check the device's clock (NTP)"
    )
    assert drawn(sessions) == (0, 0)
    body = ahead.licence_request(42, T0 + 4)
    answer = client.post("/v1/licences", json=body, headers=ahead.headers(body))
    assert answer.json()["licence"]["expires_at"] == T0 + 5
    assert drawn(sessions) == (1, 1000)


def test_a_device_ahead_at_the_contract_end_draws_nothing(
    client, sessions, clock, tmp_path: Path
) -> None:
    make_application(sessions)
    make_customer(sessions, contract_end=dt.datetime.fromtimestamp(T0 + 5, dt.UTC))
    runtime = device(client, tmp_path / "device", Clock(T0 + 10))
    for _ in range(CALLS):
        with pytest.raises(LicenceDeniedError, match="contract_ended"):
            runtime.consume()
    runtime.close()
    assert drawn(sessions) == (0, 0)


def test_an_unusable_licence_is_not_asked_for_again_before_retry_seconds(
    client, sessions, clock, tmp_path: Path
) -> None:
    """Licences of 60 s to a device 100 s ahead: each expires on arrival."""
    make_application(sessions)
    make_customer(sessions, default_licence_seconds=60)
    device_clock = Clock(T0 + 100)
    runtime = device(client, tmp_path / "device", device_clock)
    for _ in range(CALLS):
        with pytest.raises(LicenceError, match="issued licence") as err:
            runtime.consume()
    assert drawn(sessions) == (1, 10)
    assert "it is asked again after 2026-05-28 20:33:20 UTC" in str(err.value)
    device_clock.now += runtime.retry_seconds
    clock.now += runtime.retry_seconds
    with pytest.raises(LicenceError, match="issued licence") as err:
        runtime.consume()
    assert "asked again" not in str(err.value)
    runtime.close()
    assert drawn(sessions) == (2, 20)


def test_a_held_answer_is_dropped_once_another_licence_is_taken(tmp_path: Path) -> None:
    """The hold is about the licence it would have replaced: a process that took the licence
    another process cached asks the server again once that one expires."""
    server, clock = fake.FakeServer(duration=60), fake.Clock(fake.T0)
    held = fake.make_client(server, tmp_path / "state", clock)
    server.answer = lambda request: httpx.Response(200, content=b"<html>login</html>")
    with pytest.raises(LicenceError, match="non-JSON content"):
        held.ensure_licence()
    server.answer = None
    other = fake.make_client(server, tmp_path / "state", clock)
    issued = other.ensure_licence()  # cached for every process of the device
    clock.t += 10
    assert held.ensure_licence() == issued
    clock.t += 60  # expired, inside held's retry_seconds
    assert held.ensure_licence().licence_id != issued.licence_id
    assert len(server.licence_requests) == 2
    held.close()
    other.close()
