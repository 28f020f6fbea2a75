"""A device that resends a granted licence request (its answer was lost) after it sent more than
its 30 licence requests of the minute got ``rate_limited``: the licence the quota was charged
for was lost, and the device's next request was charged again. A resend of an answered request
is answered with its licence past the limit; new requests, and stale resends, are not. Nor is
such a resend audited as ``licence.deny`` ``rate_limited`` (it was, when it was the first request
past the limit that minute, while it was answered with its licence)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from tests.licensing.server_helpers import FakeDevice, make_application, make_customer

from sklicense.models import AuditLog, Customer
from sklicense.settings import Settings


def post(client: Any, device: FakeDevice, body: dict[str, Any]) -> Any:
    return client.post("/v1/licences", json=body, headers=device.headers(body))


def denials(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        rows = session.scalars(select(AuditLog).where(AuditLog.action == "licence.deny"))
        return [row.detail["reason"] for row in rows]


def granted_then_limited(client: Any, sessions: sessionmaker[Session], clock: Any) -> tuple:
    """A device whose first licence request was granted (its answer lost on the way), then
    sent as many other requests as its limit allows this minute: the device, the request and
    the licence granted."""
    make_application(sessions)
    make_customer(sessions, inference_quota=1000)
    device = FakeDevice()
    first = device.licence_request(42, clock.now, requested_inferences=10)
    granted = post(client, device, first).json()["licence"]
    for _ in range(Settings().licence_requests_per_minute - 1):  # charging nothing
        other = device.licence_request(42, clock.now, application="unknown-app")
        assert post(client, device, other).json()["reason"] == "unknown_application"
    return device, first, granted


def test_a_resend_past_the_rate_limit_gets_its_licence(
    client, sessions: sessionmaker[Session], clock
) -> None:
    device, first, granted = granted_then_limited(client, sessions, clock)
    limit = Settings().licence_requests_per_minute
    resent = post(client, device, first)
    assert resent.status_code == 200 and resent.json()["licence"] == granted
    new = post(client, device, device.licence_request(42, clock.now, requested_inferences=10))
    assert (new.status_code, new.json()["reason"]) == (429, "rate_limited")
    with sessions() as session:
        assert session.get(Customer, 42).inferences_granted == 10
        resends = select(func.count()).where(AuditLog.action == "licence.resend")
        assert session.scalar(resends.select_from(AuditLog)) == 0  # past the limit: logged
    clock.now += 301  # the request is stale now: past the (stale) limit, it gets no licence
    answers = [post(client, device, first) for _ in range(limit + 1)]
    assert {a.json()["reason"] for a in answers[:limit]} == {"stale_request"}
    assert (answers[-1].status_code, answers[-1].json()["reason"]) == (429, "rate_limited")


def test_a_resend_answered_past_the_limit_is_not_audited_as_denied(
    client, sessions: sessionmaker[Session], clock
) -> None:
    device, first, _ = granted_then_limited(client, sessions, clock)
    before = denials(sessions)
    resent = post(client, device, first)  # the first request past the limit this minute
    assert resent.status_code == 200
    assert denials(sessions) == before  # no rate_limited denial for an answered resend
    new = post(client, device, device.licence_request(42, clock.now))
    assert (new.status_code, new.json()["reason"]) == (429, "rate_limited")
    assert denials(sessions) == [*before, "rate_limited"]  # the first real refusal is audited
