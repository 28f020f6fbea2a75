"""Every answer lost for 100 minutes: the first licence request that reached the server was
denied (the customer's quota used up), the administrator raised the quota, and the next
request was granted. The runtime names the first and the latest 7 requests of such a chain
(``supersedes``): 8 requests later the granted one was no longer named, the server granted
the next request a second licence, and the first was charged but never received. The server
now notes each request it answered with a licence granted to one it superseded, and answers
a request naming any of those with that licence too. Against the real server app, SQLite and
PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.licensing.server_helpers import FakeDevice
from tests.licensing.test_lost_answer_resent_later import granted, start
from tests.licensing.test_resend_superseded import first_grant, post, start_again

from sklicense import crud
from sklicense.models import AuditLog, LicenceResend
from sklicense.service import RESENDS_NOTED
from skruntime.errors import LicenceUnavailableError


@pytest.mark.parametrize("restarted", [False, True], ids=["same process", "restarted"])
def test_a_grant_after_a_denial_stays_answered_through_a_long_chain(
    client, sessions, clock, tmp_path: Path, restarted: bool
) -> None:
    """Before: 14 requests, 2 licences granted (20 inferences), 1 received (10)."""
    folder = tmp_path / "device"
    device, slow, pinned = start(client, sessions, clock, folder, late=120)  # 40 attempts
    with sessions.begin() as session:
        crud.update_customer(session, 42, "test", inference_quota=0)
    for attempt in range(100):
        if attempt == 2:  # the first request reached the server, denied: the quota is raised
            with sessions.begin() as session:
                crud.update_customer(session, 42, "test", inference_quota=1000)
        try:
            licence = device.ensure_licence()
            break
        except LicenceUnavailableError:
            clock.now += 150
            if restarted:  # the chain is in the pending file
                device.close()
                device = start_again(slow, pinned, folder, clock)
    device.close()
    nonces = list(dict.fromkeys(slow.nonces))
    assert (attempt, len(nonces)) == (40, 14)  # more requests than a chain names (8)
    with sessions() as session:
        denied = session.scalars(select(AuditLog.detail).where(AuditLog.action == "licence.deny"))
        reasons = [d["reason"] for d in denied]  # the first request's, then its resends'
    assert reasons == ["quota_exhausted"] + ["replayed_request"] * 8
    # granted to the second request, named no more: the answer names one it answered
    assert licence.request_nonce in nonces[2:] and licence.inferences == 10
    assert granted(sessions) == (10, [10])


def test_a_request_naming_one_answered_with_a_superseded_grant_gets_it(
    client, sessions, clock
) -> None:
    """The second request supersedes the first (granted) and is answered with its licence;
    a third names only the second, and gets that licence too, uncharged, naming the second as
    its ``request_nonce``: a runtime takes only a licence of a request it names."""
    device, first, licence = first_grant(client, sessions, clock)
    clock.now += 400
    second = device.licence_request(
        42, clock.now, requested_inferences=10, supersedes=[first["nonce"]]
    )
    assert post(client, device, second).json()["licence"]["licence_id"] == licence["licence_id"]
    clock.now += 400
    third = device.licence_request(
        42, clock.now, requested_inferences=10, supersedes=[second["nonce"]]
    )
    answer = post(client, device, third).json()["licence"]
    assert (answer["licence_id"], answer["request_nonce"]) == (
        licence["licence_id"],
        second["nonce"],
    )
    assert granted(sessions) == (10, [10])


def noted(sessions: Any, device: FakeDevice) -> list[str]:
    """The nonces of the device's requests noted as answered with a superseded grant."""
    with sessions() as session:
        where = LicenceResend.device_id == device.id
        return list(session.scalars(select(LicenceResend.nonce).where(where).order_by("id")))


def test_a_device_keeps_its_latest_notes_only(client, sessions, clock) -> None:
    """Every request answered with a superseded grant was noted for ever: a device naming its
    granted request in each of 80 requests (30 a minute are allowed) added 80 rows, and 1,000
    added 1,000, still there a day after the licence expired. Now the latest 64 of each device
    stay, and a request naming the latest gets the licence."""
    other = FakeDevice()
    device, first, licence = first_grant(client, sessions, clock)
    granted_other = other.licence_request(42, clock.now, requested_inferences=10)
    assert post(client, other, granted_other).status_code == 200
    later = other.licence_request(
        42, clock.now, requested_inferences=10, supersedes=[granted_other["nonce"]]
    )
    assert post(client, other, later).status_code == 200
    nonces = []
    for _ in range(RESENDS_NOTED + 16):
        clock.now += 3
        body = device.licence_request(
            42, clock.now, requested_inferences=10, supersedes=[first["nonce"]]
        )
        assert post(client, device, body).json()["licence"]["licence_id"] == licence["licence_id"]
        nonces.append(body["nonce"])
    assert (noted(sessions, device), noted(sessions, other)) == (nonces[16:], [later["nonce"]])
    clock.now += 3
    last = device.licence_request(42, clock.now, requested_inferences=10, supersedes=nonces[-1:])
    assert post(client, device, last).json()["licence"]["licence_id"] == licence["licence_id"]
    assert granted(sessions) == (20, [10, 10])
