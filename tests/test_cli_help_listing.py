"""``skprotect --help`` and ``sklicense ... --help`` list each command on one line with its whole
summary: the command list kept the line breaks of multi-line docstrings, so a summary stopped
mid-sentence on one line and went on, ragged, on the next."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from sklicense.cli import app as sklicense_app
from skprotect_pytorch.cli import app as skprotect_app


def _groups(app: typer.Typer, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command group of ``app`` as the words that name it (``()``, ``("token",)``)."""
    group = typer.main.get_command(app)
    for word in path:
        group = group.commands[word]
    found = [path]
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            found += _groups(app, (*path, name))
    return found


GROUPS = [(skprotect_app, path) for path in _groups(skprotect_app)]
GROUPS += [(sklicense_app, path) for path in _groups(sklicense_app)]


@pytest.mark.parametrize(
    ("app", "path"), GROUPS, ids=[" ".join(("cli", *path)) for _, path in GROUPS]
)
def test_each_command_is_listed_with_its_summary_on_one_line(
    app: typer.Typer, path: tuple[str, ...]
) -> None:
    group: Any = typer.main.get_command(app)
    for word in path:
        group = group.commands[word]
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400"}, color=False)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name, command in group.commands.items():
        summary = " ".join(inspect.cleandoc(command.help or "").split("\n\n")[0].split())
        summary = summary.replace("`", "")  # markdown shows a code span without its backticks
        listed = [line for line in lines if line.lstrip("│ ").startswith(f"{name} ")]
        assert len(listed) == 1, (name, result.output)
        assert summary in " ".join(listed[0].split()), (name, listed[0])
