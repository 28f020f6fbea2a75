"""The ``quota_exhausted`` detail says what was granted: after an administrator lowered the
quota below the inferences already granted, it said "has used its quota of 500" while 800 were
granted."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker
from tests.licensing.server_helpers import FakeDevice, make_application, make_customer

from sklicense import crud


def test_a_quota_lowered_below_the_granted_inferences_is_said_so(
    client, sessions: sessionmaker[Session], clock
) -> None:
    make_application(sessions)
    make_customer(sessions, inference_quota=1000)
    device = FakeDevice()
    body = device.licence_request(42, clock.now, requested_inferences=800)
    answer = client.post("/v1/licences", json=body, headers=device.headers(body))
    assert answer.json()["licence"]["inferences"] == 800
    with sessions.begin() as session:
        crud.update_customer(session, 42, "test", inference_quota=500)
    body = device.licence_request(42, clock.now)
    answer = client.post("/v1/licences", json=body, headers=device.headers(body))
    assert answer.status_code == 403
    assert answer.json()["reason"] == "quota_exhausted"
    assert answer.json()["detail"] == (
        "customer 42 was granted 800 inferences, more than its quota of 500 (lowered since): "
        "raise the quota above 800 to grant more"
    )
