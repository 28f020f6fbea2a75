"""Creating an application or a customer that exists says which command changes it: it said
only "application 'my_app' already exists", as when the line `skprotect export-kek` prints is
run again for an application the server has."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sklicense.cli import app as cli


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("NO_COLOR", "1")
    url = f"sqlite:///{tmp_path / 'sklicense.db'}"
    assert CliRunner().invoke(cli, ["db", "upgrade", "--database-url", url]).exit_code == 0
    return url


def twice(url: str, *args: str) -> tuple[int, str]:
    """Exit code and last output line of the second of two runs of ``sklicense ARGS``."""
    command = [*args, "--database-url", url]
    assert CliRunner().invoke(cli, command).exit_code == 0
    result = CliRunner().invoke(cli, command)
    return result.exit_code, result.output.splitlines()[-1]


def test_an_existing_application_names_the_commands_that_change_it(url: str) -> None:
    assert twice(url, "app", "create", "my_app", "--public-key", "A" * 43 + "=") == (
        1,
        "Error: application 'my_app' already exists: change it with sklicense app import-kek "
        "my_app --kek-file FILE, sklicense app set-public-key my_app KEY or sklicense app "
        "set-models my_app --model M",
    )


def test_an_existing_customer_names_the_command_that_changes_it(url: str) -> None:
    assert twice(url, "customer", "create", "--id", "7", "--name", "ACME", "--quota", "5") == (
        1,
        "Error: customer 7 already exists: change it with sklicense customer edit --id 7",
    )
