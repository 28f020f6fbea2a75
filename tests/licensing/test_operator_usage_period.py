"""Usage for billing, per period. Before, ``sklicense usage`` and ``GET
/v1/admin/usage/summary`` gave only each licence's latest counter: an operator billing by the
month could not tell what a customer ran in November from what it ran before (a licence of a
year spans twelve invoices). Now ``--since``/``--until`` (``?since=&until=``) give, per
licence, what the device reported running in the period, each report counted in the period
that received it, so consecutive periods add up exactly to the totals; ``--timezone`` makes a
month midnight to midnight local time across a daylight saving change."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from tests.licensing.server_helpers import FakeDevice, bearer, make_application, make_customer
from typer.testing import CliRunner

from sklicense.cli import app as cli

BERLIN = {  # report times (UTC) around Berlin's month ends; CET +01:00 until 2026-03-29
    "feb_last_local": dt.datetime(2026, 2, 28, 22, 30, tzinfo=dt.UTC),  # 23:30 CET, 28 Feb
    "mar_first_local": dt.datetime(2026, 2, 28, 23, 30, tzinfo=dt.UTC),  # 00:30 CET, 1 Mar
    "mar_last_local": dt.datetime(2026, 3, 31, 21, 30, tzinfo=dt.UTC),  # 23:30 CEST, 31 Mar
    "apr_first_local": dt.datetime(2026, 3, 31, 22, 30, tzinfo=dt.UTC),  # 00:30 CEST, 1 Apr
}
COUNTERS = {"feb_last_local": 1, "mar_first_local": 3, "mar_last_local": 8, "apr_first_local": 20}


def at(moment: dt.datetime) -> int:
    return int(moment.timestamp())


def provision(client: Any, sessions: Any, clock: Any) -> tuple[FakeDevice, str]:
    """A licence issued on 27 February 2026, and the four reports above, each at its time."""
    make_application(sessions)
    make_customer(sessions, inference_quota=100, default_licence_seconds=90 * 86400)
    device = FakeDevice("dev-bill")
    clock.now = at(dt.datetime(2026, 2, 27, 12, tzinfo=dt.UTC))
    body = device.licence_request(42, clock.now, requested_inferences=50)
    licence_id = client.post("/v1/licences", json=body, headers=device.headers(body)).json()[
        "licence"
    ]["licence_id"]
    for name, moment in BERLIN.items():
        clock.now = at(moment)
        counter = COUNTERS[name]
        report = device.usage_report(licence_id, f"{licence_id}:{counter}", counter, clock.now)
        answer = client.post("/v1/usage", json=report, headers=device.headers(report))
        assert answer.status_code == 200, answer.text
    return device, licence_id


def usage_cli(database_url: str, *options: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(cli, ["usage", *options, "--database-url", database_url])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_months_in_berlin_add_up_to_the_total(client, sessions, clock, database_url) -> None:
    provision(client, sessions, clock)
    berlin = ["--customer", "42", "--timezone", "Europe/Berlin"]
    months = [
        ("2026-02-01", "2026-03-01"),
        ("2026-03-01", "2026-04-01"),
        ("2026-04-01", "2026-05-01"),
    ]
    used = []
    for since, until in months:
        (row,) = usage_cli(database_url, *berlin, "--since", since, "--until", until)
        used.append((row["counter_at_start"], row["counter"], row["used"]))
    # February: the report of 23:30 on the 28th; March: from 00:30 on the 1st (CET) to 23:30
    # on the 31st (CEST); April: 00:30 on the 1st
    assert used == [(0, 1, 1), (1, 8, 7), (8, 20, 12)]
    (total,) = usage_cli(database_url, "--customer", "42")
    assert sum(u for _, _, u in used) == total["counter"] == 20

    # the same months in UTC cut elsewhere: the 22:30 and 23:30 UTC reports of 28 February are
    # February's, those of 31 March March's; still adding up to the total
    utc = [usage_cli(database_url, "--since", s, "--until", u) for s, u in months]
    assert [[r["used"] for r in rows] for rows in utc] == [[3], [17], []]


def test_the_admin_api_takes_the_period(client, sessions, clock, tokens) -> None:
    provision(client, sessions, clock)
    admin = bearer(tokens["read-only"])
    march = "since=2026-03-01T00:00:00%2B01:00&until=2026-04-01T00:00:00%2B02:00"
    (row,) = client.get(f"/v1/admin/usage/summary?customer_id=42&{march}", headers=admin).json()
    assert (row["counter_at_start"], row["counter"], row["used"]) == (1, 8, 7)
    plus_unescaped = "since=2026-03-01T00:00:00+01:00&until=2026-04-01T00:00:00+02:00"
    (same,) = client.get(f"/v1/admin/usage/summary?{plus_unescaped}", headers=admin).json()
    assert same == row
    (whole,) = client.get("/v1/admin/usage/summary", headers=admin).json()
    assert "used" not in whole and whole["counter"] == 20
    naive = client.get("/v1/admin/usage/summary?since=2026-03-01", headers=admin)
    assert naive.status_code == 422 and "timezone" in naive.json()["detail"]
    backwards = client.get(
        "/v1/admin/usage/summary?since=2026-04-01T00:00:00Z&until=2026-03-01T00:00:00Z",
        headers=admin,
    )
    assert backwards.status_code == 422 and "must be after" in backwards.json()["detail"]


def test_bad_period_options_are_one_error_line(database_url) -> None:
    for options, said in (
        (["--since", "March"], "--since must be an ISO 8601 date"),
        (["--timezone", "Mars/Olympus"], "--timezone must be UTC or an IANA"),
        (["--since", "2026-04-01", "--until", "2026-03-01"], "must be after --since"),
    ):
        result = CliRunner().invoke(cli, ["usage", *options, "--database-url", database_url])
        assert result.exit_code == 1 and said in result.output, result.output
