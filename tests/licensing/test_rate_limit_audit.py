"""A registered device past its licence rate limit: answered 429 every time, audited once a
minute; requests with a timestamp outside the window count apart (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import select
from tests.licensing.server_helpers import T0, FakeDevice, make_application, make_customer

from sklicense.models import AuditLog, Device


def ask(client: Any, device: FakeDevice, now: int, **fields: Any) -> Any:
    body = device.licence_request(42, now, **fields)
    return client.post("/v1/licences", json=body, headers=device.headers(body))


def denials(sessions: Any) -> Counter[str]:
    with sessions() as session:
        rows = session.scalars(select(AuditLog).where(AuditLog.action == "licence.deny"))
        return Counter(row.detail["reason"] for row in rows)


def test_a_device_that_keeps_asking_is_audited_once_a_minute(
    client, sessions, clock, settings, caplog
) -> None:
    """A revoked device in a retry loop added one audit row per refused request."""
    make_application(sessions)
    make_customer(sessions)
    limit = settings.licence_requests_per_minute
    clock.now = T0 - T0 % 60  # start of a window
    device = FakeDevice("dev-1")
    assert ask(client, device, clock.now, requested_inferences=1).status_code == 200
    with sessions.begin() as session:
        session.get(Device, "dev-1").status = "revoked"
    codes = Counter(ask(client, device, clock.now).status_code for _ in range(limit + 20))
    assert codes == {403: limit - 1, 429: 21}
    assert denials(sessions) == {"device_revoked": limit - 1, "rate_limited": 1}
    detail = f"device dev-1 sent more than {limit} licence requests this minute; retry later"
    assert f"{detail} (audited once a minute)" in caplog.text
    clock.now += 60  # the next minute: its first refusal past the limit is audited again
    codes = Counter(ask(client, device, clock.now).status_code for _ in range(limit + 2))
    assert codes == {403: limit, 429: 2}
    assert denials(sessions) == {"device_revoked": 2 * limit - 1, "rate_limited": 2}


def test_a_captured_request_replayed_later_does_not_keep_the_device_from_renewing(
    client, sessions, clock, settings
) -> None:
    """A request captured once, replayed a day later as often as the limit allows: refused
    (stale, then 429), while the device's own requests are still answered."""
    make_application(sessions)
    make_customer(sessions)
    limit = settings.licence_requests_per_minute
    device = FakeDevice("dev-1")
    captured = device.licence_request(42, clock.now, requested_inferences=1)
    headers = device.headers(captured)
    assert client.post("/v1/licences", json=captured, headers=headers).status_code == 200
    clock.now += 86400 - clock.now % 60  # a day later, at the start of a minute
    replays = [
        client.post("/v1/licences", json=captured, headers=headers) for _ in range(limit + 5)
    ]
    assert Counter(r.status_code for r in replays) == {403: limit, 429: 5}
    assert replays[-1].json() == {
        "decision": "deny",
        "reason": "rate_limited",
        "detail": f"device dev-1 sent more than {limit} licence requests with a timestamp more "
        "than 300 s from the server time this minute; check the device clock",
    }
    assert ask(client, device, clock.now, requested_inferences=1).status_code == 200
    assert denials(sessions) == {"stale_request": limit, "rate_limited": 1}
