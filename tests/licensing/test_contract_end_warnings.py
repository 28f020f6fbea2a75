"""A contract end that is not in the future is recorded (it is how a customer is retired) but
said: the admin API answers a ``warning`` on create and edit, as the CLI does, naming the
licences that stay valid until they expire. The API took one silently."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest
from tests.licensing.server_helpers import FakeDevice, bearer, make_application
from typer.testing import CliRunner

from sklicense.cli import app as cli

DAY = 86400
API_FIX = 'If that is a mistake, set the right date: PATCH /v1/admin/customers/7 with {"contract_end": DATE}'  # noqa: E501


def iso(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat()


def create(client: Any, tokens: dict[str, str], **fields: Any) -> Any:
    body = {"id": 7, "name": "ACME", "inference_quota": 1000, "max_devices": 3} | fields
    return client.post("/v1/admin/customers", json=body, headers=bearer(tokens["admin"]))


def patch(client: Any, tokens: dict[str, str], **fields: Any) -> Any:
    return client.patch("/v1/admin/customers/7", json=fields, headers=bearer(tokens["admin"]))


@pytest.mark.parametrize("days", [-365, 0])
def test_create_with_an_ended_contract_warns(client, tokens, clock, days) -> None:
    end = iso(clock.now + days * DAY)
    response = create(client, tokens, contract_end=end)
    assert (response.status_code, response.json()["contract_end"][:10]) == (201, end[:10])
    assert response.json()["warning"] == (
        f"the contract end {end} is not in the future: every licence request of customer 7 "
        f"is denied contract_ended. {API_FIX}"
    )


def test_create_with_a_running_contract_does_not_warn(client, tokens, clock) -> None:
    response = create(client, tokens, contract_end=iso(clock.now + 1))
    assert (response.status_code, response.json()["warning"]) == (201, None)
    response = create(client, tokens, id=8)  # no contract end: a quota only
    assert (response.status_code, response.json()["warning"]) == (201, None)


def test_retiring_a_customer_names_the_licences_still_valid(client, tokens, sessions, clock):
    make_application(sessions)
    assert create(client, tokens, contract_end=iso(clock.now + 365 * DAY)).status_code == 201
    device = FakeDevice("dev-1")
    body = device.licence_request(7, clock.now)
    licence = client.post("/v1/licences", json=body, headers=device.headers(body)).json()["licence"]
    retired = iso(clock.now - DAY)
    response = patch(client, tokens, contract_end=retired, inference_quota=2000)
    assert (response.status_code, response.json()["contract_end"][:10]) == (200, retired[:10])
    assert response.json()["warning"] == (
        f"the contract end {retired} is not in the future: every licence request of customer 7 "
        "is denied contract_ended (1 licence(s) already issued stay valid until they expire, "
        f"the last at {iso(licence['expires_at'])}). {API_FIX}"
    )
    assert patch(client, tokens, max_devices=4).json()["warning"] is None  # end not set


def test_cli_edit_warns_as_create_does(database_url) -> None:
    def invoke(*args: str) -> Any:
        return CliRunner().invoke(cli, [*args, "--database-url", database_url])

    created = invoke("customer", "create", "--id", "7", "--name", "ACME", "--quota", "5")
    assert created.exit_code == 0 and "Warning" not in created.output, created.output
    end = iso(int(time.time()) - DAY)
    edited = invoke("customer", "edit", "--id", "7", "--contract-end", end)
    assert edited.exit_code == 0, edited.output
    assert edited.output.endswith(
        f"Warning: the contract end {end} is not in the future: every licence request of "
        "customer 7 is denied contract_ended. If that is a mistake, set the right date: "
        "sklicense customer edit --id 7 --contract-end DATE\n"
    )
