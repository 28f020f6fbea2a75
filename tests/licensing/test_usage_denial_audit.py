"""Every refusal of a usage report its device signed is audited as ``usage.deny`` (reason and
detail), as a licence request's is as ``licence.deny``; refusals of reports the device did not
sign, or of devices the server does not know, are not (anyone can send those). SQLite and
PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from tests.licensing.server_helpers import FakeDevice, make_application, make_customer

from sklicense.models import AuditLog


@pytest.fixture
def licensed(client: Any, sessions: Any, clock: Any) -> tuple[FakeDevice, str]:
    """Device ``dev-1`` of customer 42 with one licence, which already reported counter 5."""
    make_application(sessions)
    make_customer(sessions, inference_quota=100)
    device = FakeDevice("dev-1")
    body = device.licence_request(42, clock.now)
    licence_id = client.post("/v1/licences", json=body, headers=device.headers(body)).json()[
        "licence"
    ]["licence_id"]
    assert send(client, device, device.usage_report(licence_id, "r1", 5, clock.now)).is_success
    return device, licence_id


def send(client: Any, device: FakeDevice, body: dict[str, Any], key: Any = None) -> Any:
    return client.post("/v1/usage", json=body, headers=device.headers(body, key))


def audit_rows(sessions: Any, after: int = 0) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(actor, action, target, detail) of the audit entries with an id above ``after``."""
    with sessions() as session:
        rows = session.scalars(select(AuditLog).where(AuditLog.id > after).order_by(AuditLog.id))
        return [(r.actor, r.action, r.target, r.detail) for r in rows]


def last_audit_id(sessions: Any) -> int:
    with sessions() as session:
        return max(session.scalars(select(AuditLog.id)))


def test_a_counter_behind_refusal_is_audited(client, licensed, sessions, clock) -> None:
    """The 409 was answered but left no trace in the audit log (a state folder restored from
    a backup, or a device replaying old counters, was invisible to the vendor)."""
    device, licence_id = licensed
    before = last_audit_id(sessions)
    response = send(client, device, device.usage_report(licence_id, "r2", 4, clock.now))
    detail = (
        f"counter 4 is lower than the 5 already reported for licence {licence_id}: counters "
        "are monotonic"
    )
    assert (response.status_code, response.json()["detail"]) == (409, detail)
    assert audit_rows(sessions, before) == [
        (
            "device:dev-1",
            "usage.deny",
            f"licence:{licence_id}",
            {"reason": "counter_behind", "detail": detail},
        )
    ]


def test_every_signed_usage_refusal_is_audited(client, licensed, sessions, clock) -> None:
    """unknown_licence, stale_request and replayed_request of a signed report: answered, not
    audited before."""
    device, licence_id = licensed
    before = last_audit_id(sessions)
    unknown = send(client, device, device.usage_report("nope", "r2", 6, clock.now))
    assert unknown.status_code == 404
    stale = send(client, device, device.usage_report(licence_id, "r3", 7, clock.now - 301))
    assert stale.status_code == 403
    taken = device.usage_report(licence_id, "r4", 8, clock.now)
    assert send(client, device, taken).is_success
    replayed = send(client, device, taken)
    assert (replayed.status_code, replayed.json()["reason"]) == (403, "replayed_request")
    target = f"licence:{licence_id}"
    assert audit_rows(sessions, before) == [
        (
            "device:dev-1",
            "usage.deny",
            "licence:nope",
            {
                "reason": "unknown_licence",
                "detail": "licence nope is not a licence of device dev-1",
            },
        ),
        (
            "device:dev-1",
            "usage.deny",
            target,
            {"reason": "stale_request", "detail": stale.json()["detail"]},
        ),
        ("device:dev-1", "usage.report", target, {"report_id": "r4", "counter": 8}),
        (
            "device:dev-1",
            "usage.deny",
            target,
            {"reason": "replayed_request", "detail": replayed.json()["detail"]},
        ),
    ]
    assert stale.json()["detail"].startswith(f"request timestamp {clock.now - 301} differs")


def test_reports_nobody_proved_to_send_are_not_audited(client, licensed, sessions, clock) -> None:
    """A report its device did not sign, and one naming a device the server does not know:
    anyone can send these as fast as they like, so they add no audit row."""
    device, licence_id = licensed
    before = last_audit_id(sessions)
    forged = send(
        client,
        device,
        device.usage_report(licence_id, "r2", 6, clock.now),
        Ed25519PrivateKey.generate(),
    )
    stranger = FakeDevice("dev-x")
    unknown = send(client, stranger, stranger.usage_report(licence_id, "r3", 7, clock.now))
    assert [(r.status_code, r.json()["reason"]) for r in (forged, unknown)] == [
        (403, "bad_signature"),
        (403, "unknown_device"),
    ]
    assert audit_rows(sessions, before) == []


def test_licence_requests_stale_or_replayed_are_audited_too(client, sessions, clock) -> None:
    """The licence side, which the usage side now matches: signed denials as ``licence.deny``
    with the application named."""
    make_application(sessions)
    make_customer(sessions, inference_quota=100)
    device = FakeDevice("dev-1")
    body = device.licence_request(42, clock.now)
    assert client.post("/v1/licences", json=body, headers=device.headers(body)).is_success
    before = last_audit_id(sessions)
    other = device.licence_request(42, clock.now, nonce=body["nonce"], models=["model-b"])
    replayed = client.post("/v1/licences", json=other, headers=device.headers(other))
    stale = device.licence_request(42, clock.now - 301)
    stale_answer = client.post("/v1/licences", json=stale, headers=device.headers(stale))
    assert audit_rows(sessions, before) == [
        (
            "device:dev-1",
            "licence.deny",
            "customer:42",
            {
                "reason": reason,
                "detail": answer.json()["detail"],
                "application": "demo-app",
            },
        )
        for reason, answer in (("replayed_request", replayed), ("stale_request", stale_answer))
    ]


def test_a_replayed_or_stale_report_in_a_loop_is_audited_once_a_minute(
    client, licensed, sessions, clock
) -> None:
    """One captured report, replayed in a loop (stale, or within the window), added an audit
    row per replay the rate limit let through: 61 rows a minute, for ever. Now one a minute
    per device and reason; the answers are unchanged."""
    device, licence_id = licensed
    clock.now -= clock.now % 60  # the loop stays within one minute
    taken = device.usage_report(licence_id, "r2", 6, clock.now)
    assert send(client, device, taken).is_success
    stale = device.usage_report(licence_id, "r3", 7, clock.now - 301)
    before = last_audit_id(sessions)
    answers = [send(client, device, body).json()["reason"] for body in [taken, stale] * 5]
    assert answers == ["replayed_request", "stale_request"] * 5
    reasons = [detail["reason"] for *_, detail in audit_rows(sessions, before)]
    assert reasons == ["replayed_request", "stale_request"]
    clock.now += 60  # the next minute: audited again
    assert send(client, device, taken).json()["reason"] == "replayed_request"
    assert [d["reason"] for *_, d in audit_rows(sessions, before)][2:] == ["replayed_request"]
