"""Expired nonces are pruned for every device, at most once a minute per process and in bounded
batches, and a nonce is kept as long as its request could still be accepted (SQLite and
PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from tests.licensing.server_helpers import T0, FakeDevice, make_application, make_customer

from sklicense import service
from sklicense.models import SeenNonce
from skruntime.licensing.protocol import TIMESTAMP_WINDOW_S


@pytest.fixture(autouse=True)
def never_pruned(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process has not pruned yet (earlier tests pruned the same database at their times)."""
    monkeypatch.setattr(service, "_nonces_pruned_at", {})


@pytest.fixture
def setup(sessions: Any) -> Any:
    make_application(sessions)
    make_customer(sessions, max_devices=100)
    return sessions


def ask(client: Any, device: FakeDevice, now: int) -> Any:
    body = device.licence_request(42, now, requested_inferences=1)
    return client.post("/v1/licences", json=body, headers=device.headers(body))


def nonces_of(sessions: Any) -> dict[str, int]:
    """Per device: how many nonces are remembered."""
    with sessions() as session:
        devices = list(session.scalars(select(SeenNonce.device_id)))
    return {device: devices.count(device) for device in devices}


def remember(sessions: Any, name: str, count: int, at: int) -> None:
    """Record ``count`` nonces of one-off devices ``<name>-<i>``, seen at ``at``."""
    with sessions.begin() as session:
        for i in range(count):
            service.remember_nonce(session, f"{name}-{i}", f"{i:032x}", at)


def test_the_nonces_of_devices_that_never_ask_again_are_forgotten(client, setup, clock) -> None:
    """Only the requesting device's old nonces were deleted: a one-off identity's stayed for
    ever. Now any request prunes every device's expired nonces."""
    for i in range(3):
        assert ask(client, FakeDevice(f"once-{i}"), clock.now).status_code == 200
    clock.now += 2 * TIMESTAMP_WINDOW_S + 1
    assert ask(client, FakeDevice("daily"), clock.now).status_code == 200
    assert nonces_of(setup) == {"daily": 1}


def test_a_nonce_is_kept_while_its_request_could_be_accepted(client, setup, clock) -> None:
    """A report stamped ``t`` and recorded at ``t - window`` (the earliest the server takes it)
    is still inside the window at ``t + window``, twice the window after its nonce was
    recorded: a prune then keeps the nonce, and the report sent again is refused as replayed."""
    window = TIMESTAMP_WINDOW_S
    device = FakeDevice("dev-1")
    licence_id = ask(client, device, clock.now).json()["licence"]["licence_id"]
    clock.now += window
    report = device.usage_report(licence_id, "r1", 1, clock.now + window)
    headers = device.headers(report)
    assert client.post("/v1/usage", json=report, headers=headers).json()["accepted"] is True
    clock.now += 2 * window
    assert ask(client, FakeDevice("other"), clock.now).status_code == 200  # prunes
    assert nonces_of(setup) == {"dev-1": 1, "other": 1}  # the licence request's is forgotten
    again = client.post("/v1/usage", json=report, headers=headers)
    assert (again.status_code, again.json()["reason"]) == (403, "replayed_request")


def test_pruning_is_bounded_and_once_a_minute(setup) -> None:
    """A backlog is deleted in batches, one per request, then nothing for a minute; nonces
    no older than twice the window stay."""
    now = T0
    remember(setup, "expired", 7, now - 2 * TIMESTAMP_WINDOW_S - 1)
    remember(setup, "kept", 2, now - 2 * TIMESTAMP_WINDOW_S)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(service, "NONCE_PRUNE_BATCH", 3)
        deleted = [service.forget_expired_nonces(setup, now) for _ in range(4)]
        assert deleted == [3, 3, 1, None]
        remember(setup, "later", 1, now - 2 * TIMESTAMP_WINDOW_S - 1)
        assert service.forget_expired_nonces(setup, now + 59) is None
        assert nonces_of(setup) == {"kept-0": 1, "kept-1": 1, "later-0": 1}
        assert service.forget_expired_nonces(setup, now + 60) == 3  # the kept ones expired now
    assert service.forget_expired_nonces(setup, now - 3600) == 0  # the clock was set back


def test_a_failed_prune_is_logged_not_raised(setup, caplog) -> None:
    """The request before it is committed: a prune that fails (a busy database) must not turn
    its answer into a 500."""

    class Busy:
        def __call__(self) -> Any:
            return setup()

        def begin(self) -> Any:
            raise OperationalError("DELETE FROM seen_nonces", {}, Exception("database is locked"))

    assert service.forget_expired_nonces(Busy(), T0) == 0
    assert "expired nonces not deleted (retried in a minute)" in caplog.text
    assert "database is locked" in caplog.text
