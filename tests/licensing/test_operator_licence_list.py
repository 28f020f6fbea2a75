"""The admin CLI could not list licences (only ``GET /v1/admin/licences`` could): an operator
revoking a device could not see until when its licence runs, nor what allowance a customer's
devices hold. ``sklicense licence list`` lists them, newest first, by customer or device."""

from __future__ import annotations

import json

from tests.licensing.server_helpers import FakeDevice, make_application, make_customer
from typer.testing import CliRunner

from sklicense.cli import app as cli


def listed(database_url: str, *options: str) -> list[dict]:
    result = CliRunner().invoke(cli, ["licence", "list", *options, "--database-url", database_url])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_licences_are_listed_newest_first(client, sessions, clock, database_url) -> None:
    make_application(sessions)
    make_customer(sessions, inference_quota=100, max_devices=3)
    first, second = FakeDevice("dev-one"), FakeDevice("dev-two")
    for device, wanted in ((first, 10), (second, 20), (first, 30)):
        clock.now += 60
        body = device.licence_request(42, clock.now, requested_inferences=wanted)
        assert client.post("/v1/licences", json=body, headers=device.headers(body)).is_success

    rows = listed(database_url, "--customer", "42")
    assert [(r["device_id"], r["inferences"]) for r in rows] == [
        ("dev-one", 30),
        ("dev-two", 20),
        ("dev-one", 10),
    ]
    assert rows[0]["application"] == "demo-app" and rows[0]["models"] == ["model-a"]
    assert rows[0]["expires_at"].endswith("+00:00")
    assert [r["inferences"] for r in listed(database_url, "--device", "dev-two")] == [20]
    assert listed(database_url, "--customer", "7") == []
    options = ["--device", "a\x01", "--database-url", database_url]
    bad = CliRunner().invoke(cli, ["licence", "list", *options])
    assert bad.exit_code == 1 and "--device must not contain control characters" in bad.output
