"""``skprotect audit`` refuses bad options and a failing spec function with exit code 2 and a
line naming the option, before any training: exit code 1 means only that the gate failed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skprotect_pytorch.cli import app

SPEC_FILE = """
def build():
    raise RuntimeError("data.npz is missing")
"""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attacks", "A0,A0"], "error: --attacks lists an attack twice, got 'A0,A0'"),
        (["--budgets", "1,1.0000001"], "error: --budgets lists a budget twice"),  # both "1"
    ],
)
def test_a_repeated_attack_or_budget_names_the_option(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["audit", "--quick", *args])
    assert result.exit_code == 2 and message in result.output


def test_a_spec_function_that_raises_exits_2_with_its_error(tmp_path: Path) -> None:
    """It gave a traceback and exit code 1, which says the gate failed."""
    (tmp_path / "my_audit.py").write_text(textwrap.dedent(SPEC_FILE))
    result = CliRunner().invoke(app, ["audit", "--model", f"{tmp_path}/my_audit.py:build"])
    assert result.exit_code == 2, result.output
    assert "error: --model: " in result.output
    assert "raised RuntimeError: data.npz is missing" in result.output
