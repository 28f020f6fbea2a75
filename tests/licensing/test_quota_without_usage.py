"""A hostile device owner blocks or fakes the usage reports (``POST /v1/usage``) while the
device keeps renewing through ``POST /v1/licences``: it still runs exactly the customer's
quota, no more, since each licence's allowance is drawn from the quota when the server grants
it, and reports are accounting only. Against the real server app, SQLite and PostgreSQL; two
processes share the device's state folder."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from tests.licensing.server_helpers import device_client, make_application, make_customer

from sklicense.models import Customer, Licence, UsageReport
from skruntime.errors import QuotaExhaustedError
from skruntime.licensing.protocol import USAGE_PATH, unb64

QUOTA = 25


class Owner(httpx.BaseTransport):
    """The device owner's network: usage reports blocked, or answered with faked receipts."""

    def __init__(self, inner: httpx.BaseTransport, usage: str) -> None:
        self.inner = inner
        self.usage = usage

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == USAGE_PATH and self.usage == "blocked":
            raise httpx.ConnectError("blocked by the device's owner", request=request)
        if request.url.path == USAGE_PATH and self.usage == "faked":
            return httpx.Response(200, json={"accepted": True, "report_id": "any"})
        return self.inner.handle_request(request)


@pytest.mark.parametrize("usage", ["blocked", "faked"])
def test_blocked_or_faked_usage_reports_run_exactly_the_quota(
    client, sessions, clock, tmp_path: Path, usage: str
) -> None:
    make_application(sessions)
    make_customer(sessions, inference_quota=QUOTA)
    pinned = unb64(client.get("/v1/public-key").json()["public_key"])
    owner = Owner(client._transport, usage)
    processes = [
        device_client("http://testserver", owner, pinned, tmp_path / "device", clock)
        for _ in range(2)
    ]
    ran = 0
    with pytest.raises(QuotaExhaustedError):
        for i in range(10 * QUOTA):
            processes[i % 2].consume()
            ran += 1
    licences = processes[0]._read_usage()
    for process in processes:
        process.close()
    assert ran == QUOTA
    with sessions() as session:
        assert session.get(Customer, 42).inferences_granted == QUOTA
        allowances = list(session.scalars(select(Licence.inferences).order_by(Licence.issued_at)))
        assert allowances == [10, 10, 5]
        assert session.scalar(select(func.count()).select_from(UsageReport)) == 0
    # every inference is still counted on the device, none of it acknowledged
    assert sorted(entry["counter"] for entry in licences.values()) == [5, 10, 10]
    assert all(entry["reported"] == 0 for entry in licences.values())
