"""A resend answered with its licence past the device's rate limit (its answer was lost) was
audited as ``licence.deny`` ``rate_limited`` when it was the first request past the limit that
minute: the audit log said the device was refused while it was answered with its licence. It
is not audited at all now (the licence was granted, and audited, before)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from tests.licensing.server_helpers import FakeDevice, make_application, make_customer

from sklicense.models import AuditLog
from sklicense.settings import Settings


def post(client: Any, device: FakeDevice, body: dict[str, Any]) -> Any:
    return client.post("/v1/licences", json=body, headers=device.headers(body))


def denials(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        rows = session.scalars(select(AuditLog).where(AuditLog.action == "licence.deny"))
        return [row.detail["reason"] for row in rows]


def test_a_resend_answered_past_the_limit_is_not_audited_as_denied(
    client, sessions: sessionmaker[Session], clock
) -> None:
    make_application(sessions)
    make_customer(sessions, inference_quota=1000)
    device = FakeDevice()
    first = device.licence_request(42, clock.now, requested_inferences=10)
    assert post(client, device, first).status_code == 200  # its answer lost on the way
    for _ in range(Settings().licence_requests_per_minute - 1):
        other = device.licence_request(42, clock.now, application="unknown-app")
        assert post(client, device, other).json()["reason"] == "unknown_application"
    before = denials(sessions)
    resent = post(client, device, first)  # the first request past the limit this minute
    assert resent.status_code == 200
    assert denials(sessions) == before  # no rate_limited denial for an answered resend
    new = post(client, device, device.licence_request(42, clock.now))
    assert (new.status_code, new.json()["reason"]) == (429, "rate_limited")
    assert denials(sessions) == [*before, "rate_limited"]  # the first real refusal is audited
