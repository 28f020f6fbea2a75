"""A licence at the contract end is checked with the server about once a day, for free.

Every renewal drew a new allowance from the customer's quota, so once a renewal returned the
expiry of the licence it replaced (the contract end), the runtime stopped renewing until the
allowance was used up or the licence expired: a contract extended in that time (up to the
overlap window, 30 days by default) was seen only at the expiry, when a server that could not
be reached then stopped the device; a device revoked in that time ran until the contract end.
Now a renewal names the licence it renews (``renews``): when the new licence would expire at
the same time and grant nothing new, the server answers a signed ``keep`` without charging the
quota. Against the real server app, SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from tests.licensing.server_helpers import (
    APP,
    CONFIG_SHA,
    FakeDevice,
    make_application,
    make_customer,
)
from tests.licensing.test_signed_answers import server_key, signed_for

from sklicense import crud
from sklicense.models import AuditLog, Customer, Licence
from skruntime.errors import LicenceDeniedError, LicenceUnavailableError
from skruntime.licensing.client import LicenceClient
from skruntime.licensing.protocol import LICENCES_PATH, unb64

DAY = 86400
ALLOWANCE = 50


def at(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


class Network(httpx.BaseTransport):
    """The device's network to the server app, which can go down."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.up = True

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("the network is down", request=request)
        return self.inner.handle_request(request)


def runtime(
    client: Any, clock: Any, folder: Path, network: Network | None = None, **options: Any
) -> LicenceClient:
    """The licence client of a device of customer 42: 30-day overlap, allowances of 50."""
    return LicenceClient(
        "http://testserver",
        state_dir=folder,
        server_public_key=unb64(client.get("/v1/public-key").json()["public_key"]),
        application=APP,
        customer_id=42,
        models=["model-a"],
        config_sha256=CONFIG_SHA,
        overlap_seconds=30 * DAY,
        clock=clock,
        transport=network or client._transport,
        **{"requested_inferences": ALLOWANCE} | options,
    )


def contract(sessions: Any, clock: Any, days: int) -> None:
    """A customer 42 whose contract ends ``days`` from now; 1-year licences."""
    make_application(sessions)
    make_customer(
        sessions,
        contract_end=at(clock.now + days * DAY),
        inference_quota=10_000,
        default_licence_seconds=365 * DAY,
    )


def extend(sessions: Any, clock: Any, days: int) -> None:
    with sessions.begin() as session:
        crud.update_customer(session, 42, "test", contract_end=at(clock.now + days * DAY))


def granted(sessions: Any) -> tuple[int, int]:
    """The customer's ``inferences_granted`` and how many licences it was issued."""
    with sessions() as session:
        licences = session.scalar(select(func.count()).select_from(Licence))
        return session.get(Customer, 42).inferences_granted, licences


def audited(sessions: Any, action: str) -> int:
    with sessions() as session:
        return session.scalar(
            select(func.count()).select_from(AuditLog).where(AuditLog.action == action)
        )


def test_a_contract_extended_at_the_contract_end_is_seen_the_next_day(
    client, sessions, clock, tmp_path
) -> None:
    start = clock.now
    contract(sessions, clock, 40)
    network = Network(client._transport)
    device = runtime(client, clock, tmp_path / "device", network)
    device.consume()
    assert device.ensure_licence().expires_at == start + 40 * DAY
    clock.now = start + 10 * DAY  # the overlap window opens: a renewal cannot extend it
    device.consume()
    assert granted(sessions) == (ALLOWANCE, 1)  # checked, not charged
    extend(sessions, clock, 400)
    clock.now = start + 11 * DAY  # the device runs again a day later
    device.consume()
    renewed = device.ensure_licence()
    assert renewed.expires_at == start + 11 * DAY + 365 * DAY  # before: start + 40 days
    assert granted(sessions) == (2 * ALLOWANCE, 2)
    clock.now = start + 40 * DAY  # the old contract end, server unreachable: runs on
    network.up = False
    device.consume()
    device.close()


def test_a_device_revoked_at_the_contract_end_stops_the_next_day(
    client, sessions, clock, tmp_path
) -> None:
    start = clock.now
    contract(sessions, clock, 40)
    device = runtime(client, clock, tmp_path / "device")
    device.consume()
    clock.now = start + 10 * DAY
    device.consume()
    with sessions.begin() as session:
        (row,) = crud.list_devices(session, 42)
        crud.update_device(session, row.id, "test", status="revoked")
    clock.now = start + 11 * DAY  # before: ran until the contract end, 29 days later
    with pytest.raises(LicenceDeniedError) as err:
        device.consume()
    assert err.value.reason == "device_revoked"
    assert not (tmp_path / "device" / f"licence_{APP}.json").exists()
    assert granted(sessions) == (ALLOWANCE, 1)
    device.close()


def test_daily_checks_draw_nothing_from_the_quota(client, sessions, clock, tmp_path) -> None:
    """A month at the contract end, one inference every 6 hours, two processes: one check a
    day for the device, the one licence's allowance only, then ``contract_ended``."""
    start = clock.now
    contract(sessions, clock, 40)
    processes = [
        runtime(client, clock, tmp_path / "device", requested_inferences=1000) for _ in range(2)
    ]
    for i in range(4 * 40):
        clock.now = start + i * 6 * 3600
        processes[i % 2].consume()
    assert granted(sessions) == (1000, 1)
    assert audited(sessions, "licence.keep") == 30  # days 10 to 39, once each
    cached = json.loads((tmp_path / "device" / f"licence_{APP}.json").read_text())
    assert cached["at_contract_end"] is True
    assert cached["checked_at"] == start + 39 * DAY
    clock.now = start + 40 * DAY
    with pytest.raises(LicenceDeniedError, match="contract_ended"):
        processes[0].consume()
    for process in processes:
        process.close()


def test_the_check_interval_is_configurable(client, sessions, clock, tmp_path) -> None:
    start = clock.now
    contract(sessions, clock, 40)
    device = runtime(client, clock, tmp_path / "device", contract_end_check_seconds=3600)
    device.ensure_licence()
    for minutes in range(0, 6 * 60, 20):  # 6 hours in the window, an inference every 20 min
        clock.now = start + 10 * DAY + minutes * 60
        device.consume()
    assert audited(sessions, "licence.keep") == 6
    assert granted(sessions) == (ALLOWANCE, 1)
    device.close()


def test_a_failed_check_keeps_the_licence_until_it_expires(
    client, sessions, clock, tmp_path
) -> None:
    start = clock.now
    contract(sessions, clock, 40)
    network = Network(client._transport)
    device = runtime(client, clock, tmp_path / "device", network)
    licence = device.ensure_licence()
    clock.now = start + 10 * DAY
    device.ensure_licence()  # checked
    network.up = False
    clock.now = start + 39 * DAY
    assert device.ensure_licence() == licence
    clock.now = start + 40 * DAY
    with pytest.raises(LicenceUnavailableError):
        device.ensure_licence()
    device.close()


# ---------------------------------------------------------------- the server's side


def ask(client: Any, device: FakeDevice, now: int, **fields: Any) -> Any:
    body = device.licence_request(42, now, requested_inferences=ALLOWANCE, **fields)
    response = client.post(LICENCES_PATH, json=body, headers=device.headers(body))
    assert signed_for(response, LICENCES_PATH, body, server_key(client))
    return response


def test_the_server_keeps_only_a_licence_a_renewal_could_not_better(
    client, sessions, clock
) -> None:
    start = clock.now
    contract(sessions, clock, 40)
    device, other = FakeDevice("dev-1"), FakeDevice("dev-2")
    first = ask(client, device, clock.now).json()["licence"]
    theirs = ask(client, other, clock.now).json()["licence"]
    clock.now = start + 10 * DAY
    kept = ask(client, device, clock.now, renews=first["licence_id"])
    assert kept.status_code == 200
    assert kept.json() == {
        "decision": "keep",
        "licence_id": first["licence_id"],
        "expires_at": start + 40 * DAY,
        "detail": f"a renewal would expire at {at(start + 40 * DAY).isoformat()} too: licence "
        f"{first['licence_id']} stays valid, nothing is issued or drawn from the quota",
    }
    assert granted(sessions) == (2 * ALLOWANCE, 2)
    # a licence of another device, an unknown one, or one that does not hold every model
    # asked for: a plain renewal, charged
    for renews, models in (
        (theirs["licence_id"], ["model-a"]),
        ("no-such-licence", ["model-a"]),
        (first["licence_id"], ["model-a", "model-b"]),
    ):
        answer = ask(client, device, clock.now, renews=renews, models=models).json()
        assert answer["licence"]["expires_at"] == start + 40 * DAY
    assert granted(sessions) == (5 * ALLOWANCE, 5)
    # a contract that ends sooner than the licence: a renewal that ends with it
    extend(sessions, clock, 20)
    shorter = ask(client, device, clock.now, renews=first["licence_id"]).json()["licence"]
    assert shorter["expires_at"] == start + 30 * DAY
    assert granted(sessions) == (6 * ALLOWANCE, 6)
    assert audited(sessions, "licence.keep") == 1


def test_renews_is_checked_like_every_field(client, sessions, clock) -> None:
    contract(sessions, clock, 40)
    device = FakeDevice("dev-1")
    for renews in ("", "x" * 37, "a\x00b", 7):
        body = device.licence_request(42, clock.now, renews=renews)
        response = client.post(LICENCES_PATH, json=body, headers=device.headers(body))
        assert response.status_code == 422, renews
        assert response.json()["detail"][0]["loc"] == ["renews"]
