"""Review of ``sklicense licence list`` (commit 2c71203): it listed every licence of the
database, and licences are the table that grows fastest (one per renewal: a device renewing
daily adds 365 a year). 200,000 of them took 15 s and 627 MB and printed 55 MB of JSON
(/tmp/review-op: big.db). It now lists the newest ``--limit`` (100), saying on stderr when
more match."""

from __future__ import annotations

import json

from tests.licensing.server_helpers import FakeDevice, make_application, make_customer
from typer.testing import CliRunner

from sklicense.cli import app as cli


def test_the_newest_licences_are_listed_up_to_the_limit(
    client, sessions, clock, database_url, monkeypatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    make_application(sessions)
    make_customer(sessions, inference_quota=100, max_devices=3)
    device = FakeDevice("dev-one")
    for wanted in (10, 20, 30):
        clock.now += 60
        body = device.licence_request(42, clock.now, requested_inferences=wanted)
        assert client.post("/v1/licences", json=body, headers=device.headers(body)).is_success

    def listed(*options: str):
        result = CliRunner().invoke(
            cli, ["licence", "list", *options, "--database-url", database_url]
        )
        assert result.exit_code == 0, result.output
        return [r["inferences"] for r in json.loads(result.stdout)], result.stderr

    assert listed("--limit", "2") == (
        [30, 20],
        "Note: only the newest 2 licences are listed, more match: raise --limit, or choose "
        "with --customer or --device\n",
    )
    assert listed("--limit", "3") == ([30, 20, 10], "")
    assert listed() == ([30, 20, 10], "")
    zero = CliRunner().invoke(
        cli, ["licence", "list", "--limit", "0", "--database-url", database_url]
    )
    assert zero.exit_code == 1 and "--limit must be in [1, " in zero.output
