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

import pytest
from sqlalchemy import select
from tests.licensing.test_lost_answer_resent_later import granted, start
from tests.licensing.test_resend_superseded import first_grant, post, start_again

from sklicense import crud
from sklicense.models import AuditLog
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
    assert licence.request_nonce == nonces[1] and licence.inferences == 10
    assert granted(sessions) == (10, [10])


def test_a_request_naming_one_answered_with_a_superseded_grant_gets_it(
    client, sessions, clock
) -> None:
    """The second request supersedes the first (granted) and is answered with its licence;
    a third names only the second, and gets that licence too, uncharged."""
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
        first["nonce"],
    )
    assert granted(sessions) == (10, [10])
