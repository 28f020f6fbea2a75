"""``sklicense`` colours its ``Error:`` and ``Warning:`` lines on a terminal, and not when
``NO_COLOR`` is set to a non-empty value (https://no-color.org): they stayed red and yellow."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sklicense.cli import app as cli

ARGS = ["audit", "--limit", "0", "--database-url", "sqlite:///unused.db"]
MESSAGE = "Error: --limit must be in [1, 9223372036854775807], but got 0"


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"NO_COLOR": "1"}, f"{MESSAGE}\n"),
        ({"NO_COLOR": ""}, f"\x1b[31m{MESSAGE}\x1b[0m\n"),  # empty: colours stay, per the spec
        ({}, f"\x1b[31m{MESSAGE}\x1b[0m\n"),
    ],
    ids=["no-color", "empty-no-color", "default"],
)
def test_no_color_turns_the_error_colour_off(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], line: str
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    result = CliRunner().invoke(cli, ARGS, env=env, color=True)  # color: as on a terminal
    assert (result.exit_code, result.output) == (1, line)


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (["app", "create", "my_app"], "Warning: application 'my_app' has no public key"),
        (
            ["customer", "create", "--id", "7", "--name", "ACME", "--quota", "0"],
            "Warning: the quota 0 is not above the 0 inferences already granted",
        ),
    ],
    ids=["app-create", "customer-create"],
)
def test_the_warnings_of_admin_commands_are_yellow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], start: str
) -> None:
    """The warnings of ``app create`` and ``customer create``/``edit`` were printed plain, while
    the docs (and the signing key's warning) have every ``Warning:`` line yellow."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    url = f"sqlite:///{tmp_path / 'sklicense.db'}"
    assert CliRunner().invoke(cli, ["db", "upgrade", "--database-url", url]).exit_code == 0
    result = CliRunner().invoke(cli, [*args, "--database-url", url], color=True)
    assert result.exit_code == 0, result.output
    warning = result.output.splitlines()[-1]
    assert warning.startswith(f"\x1b[33m{start}") and warning.endswith("\x1b[0m")
