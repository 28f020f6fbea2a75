"""Usage reports the server refuses for good (it does not know the licence, or the device, or
it holds a higher counter for the licence) are dropped with one warning; reports that fail for
a while (network errors, 5xx, 429, a 404 or 403 that is not the server's denial) are kept and
sent again. Against the real server app (SQLite and PostgreSQL). Before, a state folder
pointed at another server, or whose licence the server no longer knew (or restored from a
backup), sent its old reports again at every renewal and close, for ever: an unreported
counter entry is never dropped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from tests.licensing.conftest import clean
from tests.licensing.server_helpers import (
    APP,
    device_client,
    make_application,
    make_customer,
)

from sklicense.models import Device, UsageReport
from skruntime.licensing.client import LicenceClient
from skruntime.licensing.protocol import b64, unb64

Answer = Callable[[httpx.Request], httpx.Response]


class Transport(httpx.BaseTransport):
    """The app's transport, recording the usage reports sent; ``usage_answers`` answer the next
    ones instead of the server (an ``Exception`` is raised, as a network error is)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.usage_sent = 0
        self.usage_answers: list[Answer | Exception] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/usage":
            self.usage_sent += 1
            if self.usage_answers:
                answer = self.usage_answers.pop(0)
                if isinstance(answer, Exception):
                    raise answer
                return answer(request)
        return self.inner.handle_request(request)


def provision(sessions: Any) -> None:
    make_application(sessions)
    make_customer(sessions, inference_quota=1000)


@pytest.fixture
def device(client, sessions, clock, tmp_path: Path) -> tuple[LicenceClient, Transport]:
    """A runtime's licence client of customer 42, talking to the app through ``Transport``."""
    provision(sessions)
    transport = Transport(client._transport)
    public_key = unb64(client.get("/v1/public-key").json()["public_key"])
    lc = device_client("http://testserver", transport, public_key, tmp_path / "device", clock)
    yield lc, transport
    lc.close()


def forget_everything(database_url: str, sessions: Any) -> None:
    """The server's database is replaced by another's (another server, a restored backup)."""
    clean(database_url)
    provision(sessions)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "skruntime.licensing.client"]


def test_reports_of_a_device_the_server_does_not_know_are_dropped_at_once(
    device, database_url, sessions, clock, caplog
) -> None:
    """Two licences' reports pending (the first failed with a 503 at the renewal): the server
    answers that the device is not registered, and both are dropped after one request."""
    lc, transport = device
    first = lc.ensure_licence()
    lc.consume(2)
    clock.now = first.expires_at - 30  # in the overlap window: the next inference renews
    transport.usage_answers = [lambda r: httpx.Response(503)]
    lc.consume(3)
    second = lc.ensure_licence()
    assert second.licence_id != first.licence_id
    assert (lc.usage(first.licence_id), lc.usage()) == (
        {"counter": 2, "reported": 0},
        {"counter": 3, "reported": 0},
    )
    forget_everything(database_url, sessions)
    caplog.clear()
    sent = transport.usage_sent
    assert lc.report_usage() is True
    assert transport.usage_sent == sent + 1
    assert lc.usage(first.licence_id)["reported"] == 2 and lc.usage()["reported"] == 3
    (warning,) = warnings_of(caplog)
    assert warning == (
        "Usage reports of 2 licence(s) dropped: http://testserver has not registered this "
        f"device ({lc.identity.device_id}: unknown_device), so it has none of its licences "
        "and would refuse the reports at every resend; the 5 inferences counted under them "
        "since their last acknowledged reports are not reported."
    )
    assert lc.report_usage() is True  # not sent again
    assert transport.usage_sent == sent + 1 and len(warnings_of(caplog)) == 1


def test_a_report_on_a_licence_the_server_does_not_know_is_dropped(
    device, database_url, sessions, caplog
) -> None:
    """The device is registered with the server, but not the licence: 404 unknown_licence.
    The warning counts what the drop loses, the 3 inferences since the acknowledged report of
    4 (it said 7, the whole counter)."""
    lc, transport = device
    licence = lc.ensure_licence()
    lc.consume(4)
    assert lc.report_usage() is True and lc.usage() == {"counter": 4, "reported": 4}
    lc.consume(3)
    forget_everything(database_url, sessions)
    identity = lc.identity
    with sessions.begin() as session:
        session.add(
            Device(
                id=identity.device_id,
                customer_id=42,
                signing_public_key=b64(identity.signing_public_key),
                exchange_public_key=b64(identity.exchange_public_key),
            )
        )
    caplog.clear()
    sent = transport.usage_sent
    assert lc.report_usage() is True
    assert lc.usage() == {"counter": 7, "reported": 7}
    (warning,) = warnings_of(caplog)
    assert warning == (
        f"Usage report for licence {licence.licence_id} dropped: http://testserver does not "
        "know that licence, and the 3 inferences counted under it since its last acknowledged "
        "report are not reported (HTTP 404 "
        f"unknown_licence: licence {licence.licence_id} is not a licence of device "
        f"{identity.device_id}), so it would refuse it at every resend."
    )
    assert lc.report_usage() is True
    assert transport.usage_sent == sent + 1 and len(warnings_of(caplog)) == 1


def test_a_report_behind_the_server_counter_is_dropped(device, caplog) -> None:
    """The state folder's usage file restored from a backup: its counter (3) is behind the 5
    the server holds, which refuses it (409 counter_behind) at every resend."""
    lc, transport = device
    licence = lc.ensure_licence()
    lc.consume(3)
    usage_file = lc.state_dir / f"usage_{APP}.json"
    backup = usage_file.read_bytes()
    lc.consume(2)
    assert lc.report_usage() is True and lc.usage()["reported"] == 5
    usage_file.write_bytes(backup)
    caplog.clear()
    sent = transport.usage_sent
    assert lc.report_usage() is True
    assert lc.usage() == {"counter": 3, "reported": 3}
    (warning,) = warnings_of(caplog)
    assert warning == (
        f"Usage report for licence {licence.licence_id} dropped: http://testserver already "
        "holds a higher counter for that licence than the 3 inferences counted here, as when "
        "the state folder was restored from a backup (HTTP 409 counter_behind: counter 3 is "
        f"lower than the 5 already reported for licence {licence.licence_id}: counters are "
        "monotonic), so it would refuse it at every resend."
    )
    assert lc.report_usage() is True
    assert transport.usage_sent == sent + 1 and len(warnings_of(caplog)) == 1


TRANSIENT: dict[str, Answer | Exception] = {
    "503": lambda r: httpx.Response(503),
    "429": lambda r: httpx.Response(429, json={"detail": "slow down"}),
    "network": httpx.ConnectError("connection refused"),
    "404-not-the-server's": lambda r: httpx.Response(404, json={"detail": "Not Found"}),
    "403-proxy": lambda r: httpx.Response(403, text="<html>forbidden</html>"),
}


@pytest.mark.parametrize("failure", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_reports_that_fail_for_a_while_are_kept(device, sessions, failure) -> None:
    lc, transport = device
    licence = lc.ensure_licence()
    lc.consume(3)
    transport.usage_answers = [failure]
    assert lc.report_usage() is False
    assert lc.usage() == {"counter": 3, "reported": 0}
    assert lc.report_usage() is True  # sent again, and taken
    assert lc.usage() == {"counter": 3, "reported": 3}
    with sessions() as session:
        stored = list(session.scalars(select(UsageReport.counter)))
    assert stored == [3] and lc.usage(licence.licence_id)["reported"] == 3
