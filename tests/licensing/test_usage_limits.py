"""POST /v1/usage: a device's signed reports are limited per minute (a revoked device's too),
audited once a minute; unsigned ones spend no device's budget, stale ones count apart; the
licence row is locked, so concurrent reports never store a decreasing counter (SQLite and
PostgreSQL)."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.licensing.server_helpers import T0, FakeDevice, make_application, make_customer

from sklicense import crud, service
from sklicense.api.main import create_app
from sklicense.models import AuditLog, Device, UsageReport
from sklicense.schemas import UsageReportIn
from sklicense.settings import Settings, SettingsError
from skruntime.licensing.protocol import SIGNATURE_HEADER

LIMIT = 5


@pytest.fixture
def limited(settings: Settings, sessions: Any, clock: Any) -> Any:
    """A client of a server that takes ``LIMIT`` usage reports a minute per device, and a
    licensed device ``dev-1`` (allowance 100), at the start of a minute."""
    make_application(sessions)
    make_customer(sessions, inference_quota=100)
    clock.now = T0 - T0 % 60
    with TestClient(
        create_app(dataclasses.replace(settings, usage_reports_per_minute=LIMIT), clock)
    ) as client:
        device = FakeDevice("dev-1")
        body = device.licence_request(42, clock.now)
        licence = client.post("/v1/licences", json=body, headers=device.headers(body)).json()
        yield client, device, licence["licence"]["licence_id"]


def send(client: Any, device: FakeDevice, body: dict[str, Any], key: Any = None) -> Any:
    return client.post("/v1/usage", json=body, headers=device.headers(body, key))


def audited(sessions: Any) -> Counter[str]:
    """The audit actions of usage reports, a refusal counted as ``usage.deny:<reason>``."""
    with sessions() as session:
        rows = session.scalars(select(AuditLog).where(AuditLog.action.like("usage.%")))
        return Counter(
            f"{row.action}:{row.detail['reason']}" if row.action == "usage.deny" else row.action
            for row in rows
        )


def stored(sessions: Any) -> list[int]:
    """The stored counters, in the order they were stored."""
    with sessions() as session:
        return list(session.scalars(select(UsageReport.counter).order_by(UsageReport.id)))


def test_a_revoked_device_reporting_in_a_loop_is_limited_and_audited_once_a_minute(
    limited, sessions, clock, caplog
) -> None:
    """Each new report id added a usage row and an audit row, without limit, also for a
    revoked device. Its reports are still taken (accounting of what it ran), up to the limit."""
    client, device, licence_id = limited
    with sessions.begin() as session:
        session.get(Device, "dev-1").status = "revoked"
    responses = [
        send(client, device, device.usage_report(licence_id, f"r{i}", i, clock.now))
        for i in range(LIMIT + 20)
    ]
    assert Counter(r.status_code for r in responses) == {200: LIMIT, 429: 20}
    detail = f"device dev-1 sent more than {LIMIT} usage reports this minute; retry later"
    assert responses[-1].json() == {"decision": "deny", "reason": "rate_limited", "detail": detail}
    assert responses[-1].headers["Retry-After"] == "60"
    assert stored(sessions) == list(range(LIMIT))
    assert audited(sessions) == {"usage.report": LIMIT, "usage.deny:rate_limited": 1}
    assert f"{detail} (audited once a minute)" in caplog.text
    clock.now += 60  # the next minute: counted again
    for i in range(LIMIT, 2 * LIMIT + 2):
        send(client, device, device.usage_report(licence_id, f"r{i}", i, clock.now))
    assert stored(sessions) == list(range(2 * LIMIT))
    assert audited(sessions) == {"usage.report": 2 * LIMIT, "usage.deny:rate_limited": 2}


def test_unsigned_reports_do_not_spend_the_device_budget(limited, sessions, clock) -> None:
    """Reports naming the device that it did not sign are refused (unaudited) and not counted:
    the device's own reports are still taken."""
    client, device, licence_id = limited
    forger = Ed25519PrivateKey.generate()
    for i in range(LIMIT + 5):
        body = device.usage_report(licence_id, f"forged{i}", 50 + i, clock.now)
        response = send(client, device, body, forger)
        assert (response.status_code, response.json()["reason"]) == (403, "bad_signature")
    unsigned = device.usage_report(licence_id, "none", 99, clock.now)
    response = client.post("/v1/usage", json=unsigned)
    assert (response.status_code, response.json()["reason"]) == (403, "bad_signature")
    for i in range(LIMIT):
        body = device.usage_report(licence_id, f"r{i}", i, clock.now)
        assert send(client, device, body).is_success
    assert stored(sessions) == list(range(LIMIT))
    assert audited(sessions) == {"usage.report": LIMIT}


def test_a_captured_report_replayed_later_does_not_keep_the_device_from_reporting(
    limited, sessions, clock
) -> None:
    """A signed report replayed a day later, as often as the limit allows: refused as stale,
    then 429 naming the clock, while the device's own reports are still taken."""
    client, device, licence_id = limited
    captured = device.usage_report(licence_id, "r0", 1, clock.now)
    headers = {SIGNATURE_HEADER: device.headers(captured)[SIGNATURE_HEADER]}
    assert client.post("/v1/usage", json=captured, headers=headers).is_success
    clock.now += 86400  # a day later, at the start of a minute
    replays = [client.post("/v1/usage", json=captured, headers=headers) for _ in range(LIMIT + 3)]
    assert Counter(r.status_code for r in replays) == {403: LIMIT, 429: 3}
    assert replays[-1].json()["detail"] == (
        f"device dev-1 sent more than {LIMIT} usage reports with a timestamp more than 300 s "
        "from the server time this minute; check the device clock"
    )
    assert send(client, device, device.usage_report(licence_id, "r1", 2, clock.now)).is_success
    assert stored(sessions) == [1, 2]


def test_the_usage_limit_setting() -> None:
    assert Settings().usage_reports_per_minute == 60
    env = Settings.from_env({"SKLICENSE_USAGE_REPORTS_PER_MINUTE": "7"})
    assert env.usage_reports_per_minute == 7
    with pytest.raises(SettingsError, match="usage_reports_per_minute must be a positive"):
        Settings(usage_reports_per_minute=0)
    with pytest.raises(SettingsError, match="SKLICENSE_USAGE_REPORTS_PER_MINUTE must be an int"):
        Settings.from_env({"SKLICENSE_USAGE_REPORTS_PER_MINUTE": "many"})


THREADS = 8
ROUNDS = 15
ALLOWANCE = 100


def test_concurrent_reports_never_store_a_decreasing_counter(client, sessions, clock) -> None:
    """Each round, 8 threads report counters ``round * 10 + thread`` at once. Without the
    licence row locked, on PostgreSQL two reports both passed the monotonicity check (409),
    so a lower counter was stored after a higher one. Every report is either stored (in
    counter order) or refused with 409 (audited as ``usage.deny``), and each stored one is
    audited as over the allowance exactly when it is."""
    make_application(sessions)
    make_customer(sessions, inference_quota=ALLOWANCE)
    device = FakeDevice("dev-1")
    body = device.licence_request(42, clock.now)
    licence = client.post("/v1/licences", json=body, headers=device.headers(body)).json()
    licence_id = licence["licence"]["licence_id"]
    assert licence["licence"]["inferences"] == ALLOWANCE
    start = threading.Barrier(THREADS)
    statuses: list[int] = []
    failures: list[BaseException] = []

    def reporter(thread: int) -> None:
        try:
            for round_ in range(ROUNDS):
                report = device.usage_report(
                    licence_id, f"r{round_}-{thread}", round_ * 10 + thread, clock.now
                )
                signature = device.headers(report)[SIGNATURE_HEADER]
                start.wait()
                outcome = service.report_usage(
                    sessions, UsageReportIn.model_validate(report), report, signature, clock.now
                )
                statuses.append(outcome.status)
        except BaseException as e:  # reported by the main thread
            failures.append(e)
            start.abort()

    threads = [threading.Thread(target=reporter, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    counters = stored(sessions)
    assert counters == sorted(counters)
    assert set(statuses) <= {200, 409} and statuses.count(200) == len(counters)
    over = sum(counter > ALLOWANCE for counter in counters)
    assert over > 0 and audited(sessions) == {
        "usage.over_allowance": over,
        "usage.report": len(counters) - over,
        "usage.deny:counter_behind": statuses.count(409),
    }
    with sessions() as session:
        (summary,) = crud.usage_summary(session)
    assert (summary["counter"], summary["over_allowance"]) == (counters[-1], True)
