"""``sklicense customer create`` with a contract end that has passed says so: the customer
exists, but every licence request of its devices is denied ``contract_ended``."""

from __future__ import annotations

import datetime as dt

import pytest
from typer.testing import CliRunner

from sklicense.cli import app as cli


def create(database_url: str, contract_end: str) -> object:
    args = ["customer", "create", "--id", "7", "--name", "ACME", "--contract-end", contract_end]
    return CliRunner().invoke(cli, [*args, "--database-url", database_url])


@pytest.mark.parametrize("days", [-365, 0])
def test_a_contract_end_not_in_the_future_is_warned_about(database_url, days) -> None:
    end = (dt.datetime.now(dt.UTC) + dt.timedelta(days=days)).replace(microsecond=0)
    result = create(database_url, end.isoformat())
    assert result.exit_code == 0, result.output  # created: a past end is how one is retired
    assert result.output.endswith(
        f"Warning: the contract end {end.isoformat()} is not in the future: every licence "
        "request of customer 7 is denied contract_ended. If that is a mistake, set the right "
        "date: sklicense customer edit --id 7 --contract-end DATE\n"
    )


def test_a_future_contract_end_is_not_warned_about(database_url) -> None:
    result = create(database_url, "2099-01-01")
    assert result.exit_code == 0 and "Warning" not in result.output
