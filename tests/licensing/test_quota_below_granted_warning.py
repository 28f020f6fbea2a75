"""A quota that is not above the inferences already granted is recorded (a quota of 0 stops a
customer) but said, as a contract end in the past is: the quota is a total, so a quota meant as
"this many more" denied every licence request ``quota_exhausted`` without a word."""

from __future__ import annotations

from typing import Any

from tests.licensing.server_helpers import FakeDevice, bearer, make_application, make_customer
from typer.testing import CliRunner

from sklicense.cli import app as cli


def spent(quota: int, granted: int) -> str:
    return (
        f"the quota {quota} is not above the {granted} inferences already granted to customer "
        "42: every licence request that needs an allowance is denied quota_exhausted "
        "(allowances already granted stay). The quota is the total since the customer was "
        f"created: to allow N more inferences, set it to {granted} + N"
    )


def grant(client: Any, clock: Any, inferences: int) -> None:
    device = FakeDevice()
    body = device.licence_request(42, clock.now, requested_inferences=inferences)
    answer = client.post("/v1/licences", json=body, headers=device.headers(body))
    assert answer.json()["licence"]["inferences"] == inferences


def test_a_quota_below_the_granted_inferences_warns(client, tokens, sessions, clock) -> None:
    make_application(sessions)
    make_customer(sessions, inference_quota=1000)
    grant(client, clock, 800)
    admin = bearer(tokens["admin"])
    response = client.patch("/v1/admin/customers/42", json={"inference_quota": 500}, headers=admin)
    assert response.status_code == 200
    assert (response.json()["inference_quota"], response.json()["warning"]) == (
        500,
        spent(500, 800),
    )
    response = client.patch("/v1/admin/customers/42", json={"inference_quota": 800}, headers=admin)
    assert response.json()["warning"] == spent(800, 800)
    response = client.patch("/v1/admin/customers/42", json={"inference_quota": 801}, headers=admin)
    assert response.json()["warning"] is None
    response = client.patch("/v1/admin/customers/42", json={"name": "Acme 2"}, headers=admin)
    assert response.json()["warning"] is None  # the quota was not set


def test_a_new_customer_with_a_quota_of_0_warns(client, tokens) -> None:
    body = {"id": 42, "name": "Acme", "inference_quota": 0}
    response = client.post("/v1/admin/customers", json=body, headers=bearer(tokens["admin"]))
    assert (response.status_code, response.json()["warning"]) == (201, spent(0, 0))


def test_the_cli_prints_it_too(database_url, sessions, clock, client) -> None:
    make_application(sessions)
    make_customer(sessions, inference_quota=100)
    grant(client, clock, 60)
    edit = ["customer", "edit", "--id", "42", "--quota", "50", "--database-url", database_url]
    result = CliRunner().invoke(cli, edit)
    assert result.exit_code == 0, result.output
    assert spent(50, 60) in " ".join(result.output.split())
