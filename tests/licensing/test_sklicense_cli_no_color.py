"""``sklicense`` colours its ``Error:`` and ``Warning:`` lines on a terminal, and not when
``NO_COLOR`` is set to a non-empty value (https://no-color.org): they stayed red and yellow."""

from __future__ import annotations

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
