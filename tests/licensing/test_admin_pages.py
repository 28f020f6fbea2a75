"""The admin lists that grow with the devices answer pages (``?limit=`` 1 to 1,000, default
1,000, the audit log's 100; ``?offset=``), the header ``X-Next-Offset`` naming the next page's
offset while more rows follow. Before, ``GET /v1/admin/usage`` answered every usage report
ever stored (rows are never deleted): 100,000 reports took 6 s and 230 MiB of server memory
for a read-only token."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select
from tests.licensing.server_helpers import FakeDevice, bearer, make_application, make_customer

from sklicense.models import AuditLog, UsageReport

LISTS = (
    "/v1/admin/audit",  # its default limit is 100
    "/v1/admin/customers",
    "/v1/admin/devices",
    "/v1/admin/licences",
    "/v1/admin/usage",
    "/v1/admin/usage/summary",
)


@pytest.fixture
def licensed(client, sessions, clock) -> list[str]:
    """5 customers; 5 devices of customer 42 with a licence each and a usage report each."""
    make_application(sessions)
    make_customer(sessions, max_devices=10)
    for customer in range(1, 5):
        make_customer(sessions, id=customer)
    licence_ids = []
    for i in range(5):
        device = FakeDevice(f"dev-{i}")
        body = device.licence_request(42, clock.now, requested_inferences=1)
        answer = client.post("/v1/licences", json=body, headers=device.headers(body))
        licence_ids.append(answer.json()["licence"]["licence_id"])
        report = device.usage_report(licence_ids[-1], "r1", i + 1, clock.now)
        assert client.post("/v1/usage", json=report, headers=device.headers(report)).is_success
    return licence_ids


def walk(client: Any, path: str, token: str, limit: int) -> list[Any]:
    """Every row of an admin list, page by page."""
    rows: list[Any] = []
    offset: str | None = "0"
    while offset is not None:
        response = client.get(f"{path}?limit={limit}&offset={offset}", headers=bearer(token))
        assert response.status_code == 200, response.text
        page = response.json()
        assert 0 < len(page) <= limit
        rows += page
        offset = response.headers.get("X-Next-Offset")
        assert offset is None or int(offset) == len(rows)
    return rows


@pytest.mark.parametrize("path", LISTS)
def test_pages_walk_the_whole_list(client, tokens, licensed, sessions, path) -> None:
    whole = client.get(path, headers=bearer(tokens["read-only"]))
    assert whole.status_code == 200 and "X-Next-Offset" not in whole.headers
    with sessions() as session:
        audited = session.scalar(select(func.count()).select_from(AuditLog))
    assert len(whole.json()) == (audited if path == "/v1/admin/audit" else 5)
    for limit in (1, 2, 5):
        assert walk(client, path, tokens["read-only"], limit) == whole.json()


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "offset=-1", f"offset={2**63}"])
def test_page_bounds(client, tokens, path, query) -> None:
    response = client.get(f"{path}?{query}", headers=bearer(tokens["read-only"]))
    assert response.status_code == 422


def test_a_list_answers_at_most_1000_rows(client, tokens, licensed, sessions) -> None:
    with sessions.begin() as session:
        session.add_all(
            UsageReport(device_id="dev-0", report_id=f"x{i}", licence_id=licensed[0], counter=i)
            for i in range(1000)
        )
    response = client.get("/v1/admin/usage", headers=bearer(tokens["read-only"]))
    assert (len(response.json()), response.headers["X-Next-Offset"]) == (1000, "1000")
    rest = client.get("/v1/admin/usage?offset=1000", headers=bearer(tokens["read-only"]))
    assert len(rest.json()) == 5 and "X-Next-Offset" not in rest.headers
